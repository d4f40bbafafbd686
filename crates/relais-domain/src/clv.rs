//! Customer lifetime value: purchase counts by the BG/NBD model (Fader, Hardie and Lee
//! 2005) and spend by the Gamma-Gamma model, both fitted by maximum likelihood, with
//! the per-customer predictions the `lifetimes` Python package (0.11.3) gives.
//!
//! Time is in weeks throughout, as in the paper. Spend is in whatever unit the
//! caller gives (cents from [`summarize`]); the Gamma-Gamma `v` is in that unit.

use std::collections::HashMap;

use chrono::NaiveDate;

use crate::money::MinorUnits;

/// Below this many customers a fit says so rather than returning noise.
pub const MIN_CUSTOMERS: usize = 20;

/// Why a summary, a fit or a prediction could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClvError {
    /// Not enough customers to estimate the model's parameters.
    #[error("the {model} model needs at least {needed} {what}, found {found}: use a longer calibration period or wait for more customers")]
    TooFewCustomers { model: &'static str, what: &'static str, found: usize, needed: usize },
    /// Nobody bought twice, so nothing tells purchase rates or spend apart.
    #[error("no customer made a repeat purchase, so the {model} model cannot be fitted: use a longer calibration period or a later calibration end")]
    NoRepeatBuyer { model: &'static str },
    /// A purchase history that cannot come from real purchases.
    #[error("invalid purchase history: {reason}")]
    InvalidHistory { reason: String },
    /// A spend that the Gamma-Gamma model cannot take.
    #[error("invalid spend: {reason}")]
    InvalidSpend { reason: String },
    /// A parameter given by the caller that is not positive and finite.
    #[error("invalid {model} parameter `{parameter}` = {value}: every parameter must be a positive finite number")]
    InvalidParameter { model: &'static str, parameter: &'static str, value: f64 },
    /// The optimiser ran out of evaluations before the likelihood settled.
    #[error("the {model} fit did not converge after {evaluations} likelihood evaluations: check the data for customers with extreme frequencies or spends")]
    NotConverged { model: &'static str, evaluations: usize },
    /// The best fit sits at the edge of the parameter space, where the model says nothing useful.
    #[error("the {model} fit drove `{parameter}` to {value:e}, beyond what the data can identify: the data do not follow the model (too few repeat buyers, or everyone alike); collect a longer history")]
    DegenerateFit { model: &'static str, parameter: &'static str, value: f64 },
    /// The Gamma-Gamma population has no finite mean spend.
    #[error("the Gamma-Gamma fit has q = {q}, at most 1, so the population's mean spend is infinite: a few very large spends dominate; cap or remove outliers before fitting")]
    InfiniteMeanSpend { q: f64 },
    /// A prediction horizon that is not a finite number of weeks, or one too long to sum.
    #[error("invalid horizon {weeks} weeks: {reason}")]
    InvalidHorizon { weeks: f64, reason: &'static str },
    /// A computation left the range of floating-point numbers.
    #[error(
        "the {what} is not a finite number at these parameters: refit the models, and report the data if it persists"
    )]
    NonFinite { what: &'static str },
}

/// One purchase: who, which day, how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The customer's identifier; summaries are sorted by it.
    pub customer: String,
    /// The day of the purchase.
    pub date: NaiveDate,
    /// The amount, in minor units.
    pub amount_cents: MinorUnits,
}

/// A customer's purchase pattern in the calibration period: the BG/NBD model's input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PurchaseHistory {
    frequency: u32,
    recency_weeks: f64,
    age_weeks: f64,
}

impl PurchaseHistory {
    /// A history of `frequency` repeat purchase days, the last `recency_weeks` after the first, which was `age_weeks` before the calibration end.
    pub fn new(frequency: u32, recency_weeks: f64, age_weeks: f64) -> Result<Self, ClvError> {
        let reason = if !recency_weeks.is_finite() || !age_weeks.is_finite() {
            Some(format!("recency {recency_weeks} and age {age_weeks} must be finite numbers of weeks"))
        } else if recency_weeks < 0.0 || age_weeks < 0.0 {
            Some(format!("recency {recency_weeks} and age {age_weeks} weeks must not be negative"))
        } else if recency_weeks > age_weeks {
            Some(format!(
                "recency {recency_weeks} weeks exceeds age {age_weeks} weeks: the last purchase cannot come after the calibration end"
            ))
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ClvError::InvalidHistory { reason }),
            None => Ok(Self { frequency, recency_weeks, age_weeks }),
        }
    }

    /// The number of repeat purchase days (`x`).
    pub fn frequency(&self) -> u32 {
        self.frequency
    }

    /// Weeks from the first to the last purchase (`t_x`).
    pub fn recency_weeks(&self) -> f64 {
        self.recency_weeks
    }

    /// Weeks from the first purchase to the calibration end (`T`).
    pub fn age_weeks(&self) -> f64 {
        self.age_weeks
    }
}

/// A customer's repeat purchases and their mean spend: the Gamma-Gamma model's input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpendHistory {
    frequency: u32,
    mean_spend: f64,
}

impl SpendHistory {
    /// `frequency` repeat purchase days with a mean spend of `mean_spend` (0 when there is none).
    pub fn new(frequency: u32, mean_spend: f64) -> Result<Self, ClvError> {
        // The model's spend is gamma distributed: a repeat buyer whose refunds
        // cancel their purchases has no place in it, and ln(0) would poison the fit.
        if !mean_spend.is_finite() || mean_spend < 0.0 || (frequency > 0 && mean_spend == 0.0) {
            return Err(ClvError::InvalidSpend {
                reason: format!(
                    "mean spend {mean_spend} over {frequency} repeat purchase days; a repeat buyer needs a positive mean spend: leave customers whose refunds cancel their purchases out of the spend model"
                ),
            });
        }
        Ok(Self { frequency, mean_spend })
    }

    /// The number of repeat purchase days (`x`).
    pub fn frequency(&self) -> u32 {
        self.frequency
    }

    /// The mean spend of the repeat purchase days (`m`, zbar in the papers).
    pub fn mean_spend(&self) -> f64 {
        self.mean_spend
    }
}

/// One customer's recency, frequency and spend at the calibration end.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerSummary {
    /// The customer's identifier.
    pub customer: String,
    /// Repeat purchase days, recency and age, in weeks.
    pub history: PurchaseHistory,
    /// Mean amount of the repeat purchase days (first purchase excluded), in minor units; 0 without repeat purchase.
    pub mean_repeat_spend_cents: f64,
}

impl CustomerSummary {
    /// The spend history in minor units, refused for a repeat buyer whose mean spend is not positive.
    pub fn spend(&self) -> Result<SpendHistory, ClvError> {
        SpendHistory::new(self.history.frequency, self.mean_repeat_spend_cents).map_err(|error| match error {
            ClvError::InvalidSpend { reason } => {
                ClvError::InvalidSpend { reason: format!("customer `{}`: {reason}", self.customer) }
            }
            other => other,
        })
    }
}

/// Summarise transactions up to and including `calibration_end`, one row per customer sorted by customer id.
///
/// Rules of `lifetimes.utils.summary_data_from_transaction_data`: purchases on
/// the same day are one purchase (amounts summed); later transactions are
/// ignored, and a customer whose first purchase is later is left out.
pub fn summarize(transactions: &[Transaction], calibration_end: NaiveDate) -> Vec<CustomerSummary> {
    let mut kept: Vec<&Transaction> = transactions.iter().filter(|t| t.date <= calibration_end).collect();
    kept.sort_unstable_by(|x, y| (&x.customer, x.date).cmp(&(&y.customer, y.date)));

    let mut summaries = Vec::new();
    let mut start = 0;
    while start < kept.len() {
        let customer = &kept[start].customer;
        let end = start + kept[start..].iter().take_while(|t| &t.customer == customer).count();
        let rows = &kept[start..end];
        let first_day = rows[0].date;
        let last_day = rows[rows.len() - 1].date;

        let mut days = 0u32;
        let mut first_day_total: MinorUnits = 0;
        let mut total: MinorUnits = 0;
        let mut previous = None;
        for row in rows {
            if previous != Some(row.date) {
                days += 1;
                previous = Some(row.date);
            }
            if row.date == first_day {
                first_day_total += row.amount_cents;
            }
            total += row.amount_cents;
        }
        let frequency = days - 1;
        let mean_repeat_spend_cents =
            if frequency == 0 { 0.0 } else { (total - first_day_total) as f64 / f64::from(frequency) };
        let weeks = |from: NaiveDate, to: NaiveDate| (to - from).num_days() as f64 / 7.0;
        summaries.push(CustomerSummary {
            customer: customer.clone(),
            history: PurchaseHistory {
                frequency,
                recency_weeks: weeks(first_day, last_day),
                age_weeks: weeks(first_day, calibration_end),
            },
            mean_repeat_spend_cents,
        });
        start = end;
    }
    summaries
}

/// BG/NBD parameters: purchase rates gamma(r, alpha) per week, dropout probabilities beta(a, b).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BgNbdParams {
    r: f64,
    alpha: f64,
    a: f64,
    b: f64,
}

impl BgNbdParams {
    /// Parameters from known values (a previous fit), each positive and finite.
    pub fn new(r: f64, alpha: f64, a: f64, b: f64) -> Result<Self, ClvError> {
        check_parameters("BG/NBD", &[("r", r), ("alpha", alpha), ("a", a), ("b", b)])?;
        Ok(Self { r, alpha, a, b })
    }

    /// Shape of the purchase-rate distribution.
    pub fn r(&self) -> f64 {
        self.r
    }

    /// Scale of the purchase-rate distribution, in weeks.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// First shape of the dropout-probability distribution.
    pub fn a(&self) -> f64 {
        self.a
    }

    /// Second shape of the dropout-probability distribution.
    pub fn b(&self) -> f64 {
        self.b
    }

    /// The log-likelihood of these histories (Fader, Hardie and Lee 2005, equation 6).
    pub fn log_likelihood(&self, histories: &[PurchaseHistory]) -> f64 {
        BgNbdData::new(histories).log_likelihood(self)
    }

    /// The probability that the customer has not dropped out by the calibration end (1 without repeat purchase).
    pub fn probability_alive(&self, history: &PurchaseHistory) -> f64 {
        // The model lets customers drop out only right after a purchase, so a
        // customer who never came back has had no chance to leave.
        if history.frequency == 0 {
            return 1.0;
        }
        let x = f64::from(history.frequency);
        let ln_odds_dead = (self.r + x)
            * ((self.alpha + history.age_weeks) / (self.alpha + history.recency_weeks)).ln()
            + (self.a / (self.b + x - 1.0)).ln();
        // 1 / (1 + e^d), written so that neither a large nor a very negative d overflows.
        if ln_odds_dead > 0.0 {
            let e = (-ln_odds_dead).exp();
            e / (1.0 + e)
        } else {
            1.0 / (1.0 + ln_odds_dead.exp())
        }
    }

    /// The expected number of purchases in the next `horizon_weeks` after the calibration end (equation 10 of the paper).
    pub fn expected_purchases(&self, history: &PurchaseHistory, horizon_weeks: f64) -> Result<f64, ClvError> {
        if !horizon_weeks.is_finite() || horizon_weeks < 0.0 {
            return Err(ClvError::InvalidHorizon {
                weeks: horizon_weeks,
                reason: "it must be a finite, non-negative number",
            });
        }
        if horizon_weeks == 0.0 {
            return Ok(0.0);
        }
        let Self { r, alpha, a, b } = *self;
        let x = f64::from(history.frequency);
        let big_t = history.age_weeks;
        let z = horizon_weeks / (alpha + big_t + horizon_weeks);
        let (ln_hyp, sign) = hyp2f1(r + x, b + x, a + b + x - 1.0, z).map_err(|failure| match failure {
            SeriesFailure::TooSlow => ClvError::InvalidHorizon {
                weeks: horizon_weeks,
                reason: "too long for these parameters (the hypergeometric series does not converge in time); use a shorter horizon",
            },
            _ => ClvError::NonFinite { what: "expected number of purchases" },
        })?;
        let first = (a + b + x - 1.0) / (a - 1.0);
        // second = 1 - 2F1 · ((alpha+T)/(alpha+T+t))^(r+x); 1 - e^u loses every
        // digit when u is near 0, exp_m1 keeps them.
        let u = ln_hyp + (r + x) * ((alpha + big_t) / (alpha + big_t + horizon_weeks)).ln();
        let second = if sign > 0.0 { -u.exp_m1() } else { 1.0 + u.exp() };
        let dropout_term = if history.frequency > 0 {
            (a / (b + x - 1.0)) * ((alpha + big_t) / (alpha + history.recency_weeks)).powf(r + x)
        } else {
            0.0
        };
        let expected = first * second / (1.0 + dropout_term);
        if expected.is_finite() {
            Ok(expected)
        } else {
            Err(ClvError::NonFinite { what: "expected number of purchases" })
        }
    }
}

/// A BG/NBD fit: the parameters at the maximum likelihood.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BgNbdFit {
    /// The parameters.
    pub params: BgNbdParams,
    /// The log-likelihood at the parameters (natural log, summed over customers).
    pub log_likelihood: f64,
    /// The number of customers fitted.
    pub n_customers: usize,
    /// Likelihood evaluations the optimiser used.
    pub evaluations: usize,
}

/// Fit the BG/NBD model to purchase histories by maximum likelihood.
pub fn fit_bg_nbd(histories: &[PurchaseHistory]) -> Result<BgNbdFit, ClvError> {
    const MODEL: &str = "BG/NBD";
    if histories.len() < MIN_CUSTOMERS {
        return Err(ClvError::TooFewCustomers {
            model: MODEL,
            what: "customers",
            found: histories.len(),
            needed: MIN_CUSTOMERS,
        });
    }
    if histories.iter().all(|h| h.frequency == 0) {
        return Err(ClvError::NoRepeatBuyer { model: MODEL });
    }
    let data = BgNbdData::new(histories);
    let objective = |theta: &[f64]| {
        let params = BgNbdParams { r: theta[0].exp(), alpha: theta[1].exp(), a: theta[2].exp(), b: theta[3].exp() };
        -data.log_likelihood(&params)
    };
    let minimum =
        minimise(&objective, &[0.0; 4]).ok_or(ClvError::NotConverged { model: MODEL, evaluations: MAX_EVALUATIONS })?;
    check_not_degenerate(MODEL, &["r", "alpha", "a", "b"], &minimum.point)?;
    let params = BgNbdParams {
        r: minimum.point[0].exp(),
        alpha: minimum.point[1].exp(),
        a: minimum.point[2].exp(),
        b: minimum.point[3].exp(),
    };
    let log_likelihood = -minimum.value;
    if !log_likelihood.is_finite() {
        return Err(ClvError::NonFinite { what: "BG/NBD log-likelihood" });
    }
    Ok(BgNbdFit { params, log_likelihood, n_customers: histories.len(), evaluations: minimum.evaluations })
}

/// Histories grouped for the likelihood: identical (x, t_x, T) rows counted once
/// with a weight, and the terms that depend only on x, only on t_x or only on T
/// computed once per distinct value, so a fit on tens of thousands of customers
/// costs one exp and one ln1p per distinct row and evaluation.
struct BgNbdData {
    frequencies: Vec<f64>,
    recencies: Vec<f64>,
    ages: Vec<f64>,
    rows: Vec<BgNbdRow>,
}

struct BgNbdRow {
    frequency: usize,
    recency: usize,
    age: usize,
    count: f64,
}

impl BgNbdData {
    fn new(histories: &[PurchaseHistory]) -> Self {
        fn index_of(values: &mut Vec<f64>, seen: &mut HashMap<u64, usize>, value: f64) -> usize {
            *seen.entry(value.to_bits()).or_insert_with(|| {
                values.push(value);
                values.len() - 1
            })
        }
        let (mut frequencies, mut recencies, mut ages) = (Vec::new(), Vec::new(), Vec::new());
        let (mut seen_frequencies, mut seen_recencies, mut seen_ages) =
            (HashMap::new(), HashMap::new(), HashMap::new());
        let mut row_of: HashMap<(usize, usize, usize), usize> = HashMap::new();
        let mut rows: Vec<BgNbdRow> = Vec::new();
        for history in histories {
            let frequency = index_of(&mut frequencies, &mut seen_frequencies, f64::from(history.frequency));
            // Without a repeat purchase t_x plays no part: one group whatever it is.
            let recency_value = if history.frequency == 0 { 0.0 } else { history.recency_weeks };
            let recency = index_of(&mut recencies, &mut seen_recencies, recency_value);
            let age = index_of(&mut ages, &mut seen_ages, history.age_weeks);
            let row = *row_of.entry((frequency, recency, age)).or_insert_with(|| {
                rows.push(BgNbdRow { frequency, recency, age, count: 0.0 });
                rows.len() - 1
            });
            rows[row].count += 1.0;
        }
        Self { frequencies, recencies, ages, rows }
    }

    fn log_likelihood(&self, params: &BgNbdParams) -> f64 {
        let BgNbdParams { r, alpha, a, b } = *params;
        if [r, alpha, a, b].iter().any(|p| !p.is_finite() || *p <= 0.0) {
            return f64::NAN;
        }
        let constant = -ln_gamma(r) + r * alpha.ln() + ln_gamma(a + b) - ln_gamma(b);
        // Per x: ln[Γ(r+x) α^r / Γ(r)] + ln[B(a, b+x) / B(a, b)], and ln[a / (b+x-1)].
        let mut common = Vec::with_capacity(self.frequencies.len());
        let mut ln_dropout = Vec::with_capacity(self.frequencies.len());
        for &x in &self.frequencies {
            common.push(constant + ln_gamma(r + x) + ln_gamma(b + x) - ln_gamma(a + b + x));
            ln_dropout.push(if x > 0.0 { (a / (b + x - 1.0)).ln() } else { 0.0 });
        }
        let ln_ages: Vec<f64> = self.ages.iter().map(|t| (alpha + t).ln()).collect();
        let ln_recencies: Vec<f64> = self.recencies.iter().map(|t| (alpha + t).ln()).collect();

        let mut total = 0.0;
        for row in &self.rows {
            let x = self.frequencies[row.frequency];
            let alive = -(r + x) * ln_ages[row.age];
            let ln_row = if x > 0.0 {
                let dropped = ln_dropout[row.frequency] - (r + x) * ln_recencies[row.recency];
                ln_add_exp(alive, dropped)
            } else {
                alive
            };
            total += row.count * (common[row.frequency] + ln_row);
        }
        total
    }
}

/// Gamma-Gamma parameters: spend per purchase is gamma(p, nu), nu is gamma(q, v).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GammaGammaParams {
    p: f64,
    q: f64,
    v: f64,
}

impl GammaGammaParams {
    /// Parameters from known values (a previous fit), each positive and finite.
    pub fn new(p: f64, q: f64, v: f64) -> Result<Self, ClvError> {
        check_parameters("Gamma-Gamma", &[("p", p), ("q", q), ("v", v)])?;
        Ok(Self { p, q, v })
    }

    /// Shape of the spend of one purchase.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// Shape of the spread of customers' spend scales.
    pub fn q(&self) -> f64 {
        self.q
    }

    /// Scale of the spread of customers' spend scales, in the spend's unit.
    pub fn v(&self) -> f64 {
        self.v
    }

    /// The log-likelihood of the repeat buyers among these histories (customers without repeat purchase are skipped).
    pub fn log_likelihood(&self, spends: &[SpendHistory]) -> f64 {
        spends.iter().filter(|s| s.frequency > 0).map(|s| self.log_likelihood_of(s)).sum()
    }

    fn log_likelihood_of(&self, spend: &SpendHistory) -> f64 {
        let Self { p, q, v } = *self;
        let x = f64::from(spend.frequency);
        let m = spend.mean_spend;
        ln_gamma(p * x + q) - ln_gamma(p * x) - ln_gamma(q) + q * v.ln() + (p * x - 1.0) * m.ln() + p * x * x.ln()
            - (p * x + q) * (x * m + v).ln()
    }

    /// The expected mean spend per purchase of this customer (lifetimes' `conditional_expected_average_profit`); the population mean when x = 0.
    pub fn expected_average_spend(&self, spend: &SpendHistory) -> Result<f64, ClvError> {
        let Self { p, q, v } = *self;
        if q <= 1.0 {
            return Err(ClvError::InfiniteMeanSpend { q });
        }
        let x = f64::from(spend.frequency);
        // A weighted mean of the population mean v·p/(q-1) and the customer's
        // own mean, the weight growing with the customer's repeat purchases.
        let weight = p * x / (p * x + q - 1.0);
        let expected = (1.0 - weight) * (v * p / (q - 1.0)) + weight * spend.mean_spend;
        if expected.is_finite() {
            Ok(expected)
        } else {
            Err(ClvError::NonFinite { what: "expected average spend" })
        }
    }
}

/// A Gamma-Gamma fit: the parameters at the maximum likelihood.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GammaGammaFit {
    /// The parameters.
    pub params: GammaGammaParams,
    /// The log-likelihood at the parameters, over the repeat buyers.
    pub log_likelihood: f64,
    /// The number of repeat buyers fitted.
    pub n_customers: usize,
    /// Likelihood evaluations the optimiser used.
    pub evaluations: usize,
}

/// Fit the Gamma-Gamma model (penalizer 0, as lifetimes' default) to the repeat buyers among these spends.
pub fn fit_gamma_gamma(spends: &[SpendHistory]) -> Result<GammaGammaFit, ClvError> {
    const MODEL: &str = "Gamma-Gamma";
    let repeat: Vec<SpendHistory> = spends.iter().copied().filter(|s| s.frequency > 0).collect();
    if repeat.is_empty() {
        return Err(ClvError::NoRepeatBuyer { model: MODEL });
    }
    if repeat.len() < MIN_CUSTOMERS {
        return Err(ClvError::TooFewCustomers {
            model: MODEL,
            what: "customers with a repeat purchase",
            found: repeat.len(),
            needed: MIN_CUSTOMERS,
        });
    }
    // Start at the spend's own scale so that the fit does not depend on the unit.
    let mean_spend = repeat.iter().map(|s| s.mean_spend).sum::<f64>() / repeat.len() as f64;
    let start = [0.0, 0.0, mean_spend.ln()];
    let objective = |theta: &[f64]| {
        let params = GammaGammaParams { p: theta[0].exp(), q: theta[1].exp(), v: theta[2].exp() };
        -params.log_likelihood(&repeat)
    };
    let minimum =
        minimise(&objective, &start).ok_or(ClvError::NotConverged { model: MODEL, evaluations: MAX_EVALUATIONS })?;
    let relative = [minimum.point[0], minimum.point[1], minimum.point[2] - start[2]];
    check_not_degenerate(MODEL, &["p", "q", "v"], &relative)?;
    let params = GammaGammaParams { p: minimum.point[0].exp(), q: minimum.point[1].exp(), v: minimum.point[2].exp() };
    let log_likelihood = -minimum.value;
    if !log_likelihood.is_finite() {
        return Err(ClvError::NonFinite { what: "Gamma-Gamma log-likelihood" });
    }
    Ok(GammaGammaFit { params, log_likelihood, n_customers: repeat.len(), evaluations: minimum.evaluations })
}

/// What the fitted models expect of one customer.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerForecast {
    /// The customer's identifier.
    pub customer: String,
    /// Probability that the customer is still active at the calibration end.
    pub probability_alive: f64,
    /// Expected number of purchases over the horizon.
    pub expected_purchases: f64,
    /// Expected mean spend per purchase, in minor units.
    pub expected_average_spend_cents: f64,
    /// Expected purchases times expected mean spend, undiscounted, in minor units.
    pub expected_value_cents: f64,
}

/// The expected value of a customer over `horizon_weeks`: expected purchases times expected mean spend.
///
/// Undiscounted, and in the spend's unit: it is the revenue the models expect
/// in the horizon, not a present value. Multiplying is right because the
/// Gamma-Gamma model assumes spend independent of the purchase process.
pub fn expected_value(
    purchases: &BgNbdParams,
    spend_model: &GammaGammaParams,
    history: &PurchaseHistory,
    spend: &SpendHistory,
    horizon_weeks: f64,
) -> Result<f64, ClvError> {
    Ok(purchases.expected_purchases(history, horizon_weeks)? * spend_model.expected_average_spend(spend)?)
}

/// Forecasts for every summarised customer over `horizon_weeks`, with the Gamma-Gamma model fitted on the same minor units.
pub fn forecast(
    summaries: &[CustomerSummary],
    purchases: &BgNbdParams,
    spend_model: &GammaGammaParams,
    horizon_weeks: f64,
) -> Result<Vec<CustomerForecast>, ClvError> {
    summaries
        .iter()
        .map(|summary| {
            let spend = summary.spend()?;
            let expected_purchases = purchases.expected_purchases(&summary.history, horizon_weeks)?;
            let expected_average_spend_cents = spend_model.expected_average_spend(&spend)?;
            Ok(CustomerForecast {
                customer: summary.customer.clone(),
                probability_alive: purchases.probability_alive(&summary.history),
                expected_purchases,
                expected_average_spend_cents,
                expected_value_cents: expected_purchases * expected_average_spend_cents,
            })
        })
        .collect()
}

fn check_parameters(model: &'static str, values: &[(&'static str, f64)]) -> Result<(), ClvError> {
    match values.iter().find(|(_, value)| !value.is_finite() || *value <= 0.0) {
        Some(&(parameter, value)) => Err(ClvError::InvalidParameter { model, parameter, value }),
        None => Ok(()),
    }
}

/// Beyond e^±20 (5·10^8) relative to its starting scale a parameter has run
/// off to a boundary of the model (no dropout, no heterogeneity): report it.
const MAX_LN_PARAMETER: f64 = 20.0;

fn check_not_degenerate(model: &'static str, names: &[&'static str], ln_values: &[f64]) -> Result<(), ClvError> {
    match names.iter().zip(ln_values).find(|(_, v)| v.abs() > MAX_LN_PARAMETER) {
        Some((&parameter, &ln_value)) => Err(ClvError::DegenerateFit { model, parameter, value: ln_value.exp() }),
        None => Ok(()),
    }
}

/// ln Γ(x) for x > 0.
fn ln_gamma(x: f64) -> f64 {
    libm::lgamma(x)
}

/// ln(e^u + e^w) without overflow.
fn ln_add_exp(u: f64, w: f64) -> f64 {
    let (high, low) = if u >= w { (u, w) } else { (w, u) };
    high + (low - high).exp().ln_1p()
}

/// Why the hypergeometric series gave no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeriesFailure {
    /// z outside [0, 1), where the series diverges.
    OutOfRange,
    /// c is a non-positive integer: the function has a pole.
    Pole,
    /// Too many terms: z too close to 1 for these parameters.
    TooSlow,
    /// The partial sums left the floating-point range.
    Overflow,
}

/// The Gauss hypergeometric function 2F1(a, b; c; z) for 0 ≤ z < 1 by its power
/// series, as (ln |value|, sign of value).
///
/// In the BG/NBD expectation z = t / (alpha + T + t) < 1, where the series
/// converges. Terms follow each other by the ratio (a+k)(b+k) z / ((c+k)(k+1)),
/// which tends to z; the sum stops once the remaining tail, bounded by a
/// geometric series of ratio max(current ratio, z), is below 1e-16 of the sum
/// of the terms' sizes. The sums are rescaled as they grow so that a large x
/// (a value near (1-z)^(c-a-b), which can pass 10^308) does not overflow. The
/// sign matters when c < 0 (x = 0 and a + b < 1): the value can be negative.
fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Result<(f64, f64), SeriesFailure> {
    const MAX_TERMS: usize = 1_000_000;
    const RESCALE: f64 = 1e200;
    if !(0.0..1.0).contains(&z) {
        return Err(SeriesFailure::OutOfRange);
    }
    if c <= 0.0 && c.fract() == 0.0 {
        return Err(SeriesFailure::Pole);
    }
    let (mut sum, mut size, mut term, mut ln_scale) = (1.0f64, 1.0f64, 1.0f64, 0.0);
    for k in 0..MAX_TERMS {
        let k = k as f64;
        let ratio = (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z;
        term *= ratio;
        sum += term;
        size += term.abs();
        if !size.is_finite() {
            return Err(SeriesFailure::Overflow);
        }
        if size > RESCALE {
            sum /= RESCALE;
            size /= RESCALE;
            term /= RESCALE;
            ln_scale += RESCALE.ln();
        }
        let tail_ratio = ratio.abs().max(z);
        if term == 0.0 || (tail_ratio < 1.0 && term.abs() * tail_ratio / (1.0 - tail_ratio) <= 1e-16 * size) {
            return Ok((sum.abs().ln() + ln_scale, if sum < 0.0 { -1.0 } else { 1.0 }));
        }
    }
    Err(SeriesFailure::TooSlow)
}

/// Evaluations allowed to one fit, restarts included.
const MAX_EVALUATIONS: usize = 50_000;

struct Minimum {
    point: Vec<f64>,
    value: f64,
    evaluations: usize,
}

/// Minimise `f` from `start` by Nelder–Mead, restarted from each result until a
/// restart no longer improves it: a single run can stall on a collapsed simplex
/// away from the minimum, a fresh simplex around the result cannot.
/// Non-finite values count as +∞, so the search backs away from them. Points
/// are offsets from `start`, which sets each parameter's scale.
/// `None` when the evaluation budget runs out first.
fn minimise(f: &dyn Fn(&[f64]) -> f64, start: &[f64]) -> Option<Minimum> {
    // A wall a little beyond the degenerate range: a likelihood that keeps rising
    // along a ridge to infinity (identical customers) then stops at the wall and
    // is reported as degenerate, instead of crawling until the budget runs out.
    let wall = MAX_LN_PARAMETER + 5.0;
    let finite = |x: &[f64]| {
        if x.iter().zip(start).any(|(x, s)| (x - s).abs() > wall) {
            return f64::INFINITY;
        }
        let value = f(x);
        if value.is_finite() {
            value
        } else {
            f64::INFINITY
        }
    };
    let mut best = start.to_vec();
    let mut best_value = finite(&best);
    let mut evaluations = 1;
    let mut step = 1.0;
    loop {
        let (point, value, used) = nelder_mead(&finite, &best, step, MAX_EVALUATIONS.saturating_sub(evaluations))?;
        evaluations += used;
        let moved = point.iter().zip(&best).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        let improved = best_value - value;
        let settled = value.is_finite() && improved <= 1e-9 * (1.0 + value.abs()) && moved <= 1e-6;
        if value <= best_value {
            best = point;
            best_value = value;
        }
        if settled {
            return best_value.is_finite().then_some(Minimum { point: best, value: best_value, evaluations });
        }
        step = 0.1;
    }
}

/// One Nelder–Mead run (standard coefficients 1, 2, ½, ½) from a simplex of
/// `step` along each axis; stops when the points of the simplex agree to 1e-9,
/// or to 1e-6 with values agreeing to 1e-12 relative. Returns the best vertex, its value and
/// the evaluations used, or `None` past `budget`.
fn nelder_mead(f: &dyn Fn(&[f64]) -> f64, start: &[f64], step: f64, budget: usize) -> Option<(Vec<f64>, f64, usize)> {
    const X_TOLERANCE: f64 = 1e-9;
    const F_TOLERANCE: f64 = 1e-12;
    let n = start.len();
    let evaluations = std::cell::Cell::new(0);
    let evaluate = |x: &[f64]| {
        evaluations.set(evaluations.get() + 1);
        f(x)
    };
    let mut simplex: Vec<(Vec<f64>, f64)> = Vec::with_capacity(n + 1);
    simplex.push((start.to_vec(), evaluate(start)));
    for i in 0..n {
        let mut vertex = start.to_vec();
        vertex[i] += step;
        let value = evaluate(&vertex);
        simplex.push((vertex, value));
    }
    let along =
        |from: &[f64], to: &[f64], t: f64| -> Vec<f64> { from.iter().zip(to).map(|(c, x)| c + t * (x - c)).collect() };
    loop {
        simplex.sort_by(|u, w| u.1.total_cmp(&w.1));
        let (best, best_value) = (&simplex[0].0, simplex[0].1);
        let worst_value = simplex[n].1;
        let spread_x = simplex[1..]
            .iter()
            .flat_map(|(vertex, _)| vertex.iter().zip(best).map(|(v, b)| (v - b).abs()))
            .fold(0.0, f64::max);
        let spread_f = worst_value - best_value;
        // A collapsed simplex is done even if its values still differ: far out
        // in the parameter space rounding makes the likelihood ragged at the
        // last bits, and no further shrinking smooths it.
        let collapsed = spread_x <= X_TOLERANCE;
        let flat = spread_x <= 1e3 * X_TOLERANCE && spread_f <= F_TOLERANCE * (1.0 + best_value.abs());
        if collapsed || flat {
            return Some((simplex[0].0.clone(), best_value, evaluations.get()));
        }
        if evaluations.get() >= budget {
            return None;
        }

        let mut centroid = vec![0.0; n];
        for (vertex, _) in &simplex[..n] {
            for (c, v) in centroid.iter_mut().zip(vertex) {
                *c += v / n as f64;
            }
        }
        let worst = simplex[n].0.clone();
        let reflected = along(&centroid, &worst, -1.0);
        let reflected_value = evaluate(&reflected);
        if reflected_value < best_value {
            let expanded = along(&centroid, &worst, -2.0);
            let expanded_value = evaluate(&expanded);
            simplex[n] = if expanded_value < reflected_value {
                (expanded, expanded_value)
            } else {
                (reflected, reflected_value)
            };
            continue;
        }
        if reflected_value < simplex[n - 1].1 {
            simplex[n] = (reflected, reflected_value);
            continue;
        }
        let (contracted, limit) = if reflected_value < worst_value {
            (along(&centroid, &worst, -0.5), reflected_value)
        } else {
            (along(&centroid, &worst, 0.5), worst_value)
        };
        let contracted_value = evaluate(&contracted);
        if contracted_value < limit || (contracted_value == limit && limit.is_finite()) {
            simplex[n] = (contracted, contracted_value);
            continue;
        }
        let best = simplex[0].0.clone();
        for (vertex, value) in simplex[1..].iter_mut() {
            *vertex = along(&best, vertex, 0.5);
            *value = evaluate(vertex);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CDNOW: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/cdnow/");

    fn read(name: &str) -> String {
        let path = format!("{CDNOW}{name}");
        std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("cannot read {path}: {error}"))
    }

    /// Dollars as written in the files ("11.77", "12", "3.5") to exact cents.
    fn cents(dollars: &str) -> MinorUnits {
        let (whole, fraction) = dollars.split_once('.').unwrap_or((dollars, ""));
        assert!(fraction.len() <= 2, "more than two decimals in {dollars}");
        let fraction = format!("{fraction:0<2}");
        whole.parse::<MinorUnits>().unwrap() * 100 + fraction.parse::<MinorUnits>().unwrap()
    }

    fn day(yyyymmdd: &str) -> NaiveDate {
        let n: u32 = yyyymmdd.parse().unwrap();
        NaiveDate::from_ymd_opt((n / 10_000) as i32, n / 100 % 100, n % 100).unwrap()
    }

    fn calibration_end() -> NaiveDate {
        NaiveDate::from_ymd_opt(1997, 9, 30).unwrap()
    }

    /// `CDNOW_sample.txt`: `master_id sample_id yyyymmdd n_cds dollars`; the
    /// summaries' ID is the sample id.
    fn sample_transactions() -> Vec<Transaction> {
        read("CDNOW_sample.txt")
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(fields.len(), 5, "unexpected line {line:?}");
                Transaction { customer: fields[1].to_owned(), date: day(fields[2]), amount_cents: cents(fields[4]) }
            })
            .collect()
    }

    /// `cdnow_customers_summary.csv`: `ID,frequency,recency,T`.
    fn shipped_summary() -> Vec<(u32, PurchaseHistory)> {
        read("cdnow_customers_summary.csv")
            .lines()
            .skip(1)
            .map(|line| {
                let f: Vec<&str> = line.trim().split(',').collect();
                let history = PurchaseHistory::new(f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap());
                (f[0].parse().unwrap(), history.unwrap())
            })
            .collect()
    }

    /// `cdnow_customers_summary_with_transactions.csv`: `ID,x,t_x,T,zbar` (zbar in dollars).
    fn shipped_spends() -> Vec<(u32, SpendHistory)> {
        read("cdnow_customers_summary_with_transactions.csv")
            .lines()
            .skip(1)
            .map(|line| {
                let f: Vec<&str> = line.trim().split(',').collect();
                (f[0].parse().unwrap(), SpendHistory::new(f[1].parse().unwrap(), f[4].parse().unwrap()).unwrap())
            })
            .collect()
    }

    fn histories(rows: &[(u32, PurchaseHistory)]) -> Vec<PurchaseHistory> {
        rows.iter().map(|(_, h)| *h).collect()
    }

    #[track_caller]
    fn assert_within_percent(name: &str, got: f64, expected: f64, percent: f64) {
        let off = (got - expected).abs() / expected.abs() * 100.0;
        assert!(off <= percent, "{name}: got {got}, expected {expected} within {percent}% (off by {off:.3}%)");
    }

    #[test]
    fn sample_transactions_summarise_to_the_shipped_summary() {
        let summaries = summarize(&sample_transactions(), calibration_end());
        let shipped = shipped_summary();
        assert_eq!(summaries.len(), shipped.len());
        for (summary, (id, expected)) in summaries.iter().zip(&shipped) {
            assert_eq!(summary.customer.parse::<u32>().unwrap(), *id, "customers out of order");
            let got = summary.history;
            assert_eq!(got.frequency(), expected.frequency(), "frequency of customer {id}");
            assert!(
                (got.recency_weeks() - expected.recency_weeks()).abs() <= 0.005,
                "recency of customer {id}: {got:?}"
            );
            assert!((got.age_weeks() - expected.age_weeks()).abs() <= 0.005, "T of customer {id}: {got:?}");
        }
    }

    #[test]
    fn summary_mean_spend_excludes_the_first_day_and_matches_zbar() {
        let summaries = summarize(&sample_transactions(), calibration_end());
        let spends = shipped_spends();
        assert_eq!(summaries.len(), spends.len());
        for (summary, (id, expected)) in summaries.iter().zip(&spends) {
            assert_eq!(summary.customer.parse::<u32>().unwrap(), *id);
            let dollars = summary.mean_repeat_spend_cents / 100.0;
            assert!((dollars - expected.mean_spend()).abs() <= 0.005 + 1e-9, "zbar of customer {id}: {dollars}");
        }
    }

    #[test]
    fn same_day_purchases_merge_and_later_ones_are_ignored() {
        let t = |customer: &str, date: &str, amount_cents| Transaction {
            customer: customer.to_owned(),
            date: day(date),
            amount_cents,
        };
        let transactions = [
            t("b", "19970110", 500),
            t("a", "19970101", 1000),
            t("a", "19970115", 300),
            t("a", "19970101", 200),
            t("a", "19970115", 700),
            t("a", "19970129", 2000),
            t("a", "19971001", 9999),
            t("c", "19971001", 100),
        ];
        let summaries = summarize(&transactions, calibration_end());
        let names: Vec<&str> = summaries.iter().map(|s| s.customer.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let a = &summaries[0];
        assert_eq!(a.history.frequency(), 2);
        assert_eq!(a.history.recency_weeks(), 4.0);
        assert_eq!(a.history.age_weeks(), 272.0 / 7.0);
        assert_eq!(a.mean_repeat_spend_cents, 1500.0);
        assert_eq!(summaries[1].history.frequency(), 0);
        assert_eq!(summaries[1].mean_repeat_spend_cents, 0.0);
    }

    fn sample_fit() -> BgNbdFit {
        fit_bg_nbd(&histories(&shipped_summary())).unwrap()
    }

    #[test]
    fn bg_nbd_on_the_sample_matches_the_paper() {
        let fit = sample_fit();
        let p = fit.params;
        assert_within_percent("r", p.r(), 0.243, 1.0);
        assert_within_percent("alpha", p.alpha(), 4.414, 1.0);
        assert_within_percent("a", p.a(), 0.793, 1.0);
        assert_within_percent("b", p.b(), 2.426, 1.0);
        assert!((fit.log_likelihood - -9582.4).abs() <= 0.1, "log-likelihood {}", fit.log_likelihood);
        assert_eq!(fit.n_customers, 2357);
    }

    #[test]
    fn bg_nbd_likelihood_of_grouped_rows_equals_the_sum_over_customers() {
        let rows = histories(&shipped_summary());
        let params = BgNbdParams::new(0.243, 4.414, 0.793, 2.426).unwrap();
        let one_by_one: f64 = rows.iter().map(|h| params.log_likelihood(std::slice::from_ref(h))).sum();
        let grouped = params.log_likelihood(&rows);
        assert!((one_by_one - grouped).abs() < 1e-6, "{one_by_one} vs {grouped}");
        assert!((grouped - -9582.4).abs() < 0.5, "{grouped}");
    }

    #[test]
    fn gamma_gamma_on_the_sample_matches_lifetimes() {
        let spends: Vec<SpendHistory> = shipped_spends().into_iter().map(|(_, s)| s).collect();
        let fit = fit_gamma_gamma(&spends).unwrap();
        assert_eq!(fit.n_customers, 946);
        assert_within_percent("p", fit.params.p(), 6.2488, 1.0);
        assert_within_percent("q", fit.params.q(), 3.7446, 1.0);
        assert_within_percent("v", fit.params.v(), 15.4477, 1.0);
    }

    #[test]
    fn predictions_for_the_first_customers_match_lifetimes() {
        let params = sample_fit().params;
        let summary = shipped_summary();
        let expected_purchases = [1.22591, 0.203251, 0.194781, 0.194781, 0.194781];
        let probability_alive = [0.726609, 0.212227, 1.0, 1.0, 1.0];
        for (i, (id, history)) in summary.iter().take(5).enumerate() {
            assert_eq!(*id as usize, i + 1);
            let purchases = params.expected_purchases(history, 39.0).unwrap();
            assert_within_percent(&format!("purchases of {id}"), purchases, expected_purchases[i], 1.0);
            let alive = params.probability_alive(history);
            assert!((alive - probability_alive[i]).abs() <= 0.005, "P(alive) of {id}: {alive}");
        }

        let spends: Vec<SpendHistory> = shipped_spends().into_iter().map(|(_, s)| s).collect();
        let spend_model = fit_gamma_gamma(&spends).unwrap().params;
        let expected_spend = [24.658616, 18.91148, 71.462851, 18.91148, 27.282408];
        let repeat_buyers = spends.iter().filter(|s| s.frequency() > 0).take(5);
        for (spend, expected) in repeat_buyers.zip(expected_spend) {
            let got = spend_model.expected_average_spend(spend).unwrap();
            assert_within_percent("expected average spend", got, expected, 1.0);
        }
    }

    #[test]
    fn expected_value_is_purchases_times_spend_and_grows_with_the_horizon() {
        let purchases = BgNbdParams::new(0.243, 4.414, 0.793, 2.426).unwrap();
        let spend_model = GammaGammaParams::new(6.2488, 3.7446, 15.4477).unwrap();
        let history = PurchaseHistory::new(2, 30.43, 38.86).unwrap();
        let spend = SpendHistory::new(2, 22.35).unwrap();
        let year = expected_value(&purchases, &spend_model, &history, &spend, 52.0).unwrap();
        let product =
            purchases.expected_purchases(&history, 52.0).unwrap() * spend_model.expected_average_spend(&spend).unwrap();
        assert!((year - product).abs() < 1e-12);
        let two_years = expected_value(&purchases, &spend_model, &history, &spend, 104.0).unwrap();
        assert!(two_years > year && year > 0.0);
        assert_eq!(purchases.expected_purchases(&history, 0.0).unwrap(), 0.0);
        // A horizon of 20 years puts z near 1, where the series needs many terms.
        let long = purchases.expected_purchases(&history, 1040.0).unwrap();
        assert!(long.is_finite() && long > two_years / 24.0);
        assert!(matches!(purchases.expected_purchases(&history, f64::NAN), Err(ClvError::InvalidHorizon { .. })));
    }

    #[test]
    fn hypergeometric_series_matches_closed_forms() {
        // 2F1(1, 1; 2; z) = -ln(1 - z) / z and 2F1(a, b; b; z) = (1 - z)^-a.
        for z in [0.0, 0.1, 0.5, 0.9, 0.99, 0.9999] {
            let closed = if z == 0.0 { 1.0 } else { -(1.0f64 - z).ln() / z };
            let (ln_value, sign) = hyp2f1(1.0, 1.0, 2.0, z).unwrap();
            assert_eq!(sign, 1.0);
            assert!((ln_value.exp() - closed).abs() <= 1e-12 * closed, "z = {z}: {} vs {closed}", ln_value.exp());
            // With a = 800 the terms peak near k = 800 z / (1 - z): z = 0.9999 would need 8 million.
            if z < 0.999 {
                let (ln_power, _) = hyp2f1(800.0, 2.5, 2.5, z).unwrap();
                let closed = -800.0 * (1.0f64 - z).ln();
                assert!((ln_power - closed).abs() <= 1e-10 * closed.max(1.0), "z = {z}: {ln_power} vs {closed}");
            }
        }
        // With c < 0 the first term, 1·1·z / c = -1 at z = 0.5, outweighs the rest.
        let (_, sign) = hyp2f1(1.0, 1.0, -0.5, 0.5).unwrap();
        assert_eq!(sign, -1.0);
        assert_eq!(hyp2f1(1.0, 1.0, 2.0, 1.0), Err(SeriesFailure::OutOfRange));
        assert_eq!(hyp2f1(1.0, 1.0, -2.0, 0.5), Err(SeriesFailure::Pole));
    }

    #[test]
    fn expected_purchases_of_one_timers_stay_continuous_where_a_plus_b_crosses_one() {
        // For x = 0 the series' c is a + b - 1: negative below, with a pole at 0
        // that the factor (a + b - 1) cancels. Both sides must meet.
        let history = PurchaseHistory::new(0, 0.0, 30.0).unwrap();
        let at = |b: f64| BgNbdParams::new(0.3, 5.0, 0.4, b).unwrap().expected_purchases(&history, 52.0).unwrap();
        let (below, above) = (at(0.6 - 1e-7), at(0.6 + 1e-7));
        assert!(below.is_finite() && below > 0.0, "{below}");
        assert!((below - above).abs() <= 1e-4 * above, "{below} vs {above}");
        let far_below = at(0.3);
        assert!(far_below.is_finite() && far_below > 0.0, "{far_below}");
    }

    #[test]
    fn bg_nbd_on_the_whole_master_file_matches_lifetimes() {
        let text = read("CDNOW_master.txt");
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(header, ["customer_id", "date", "number_of_cds", "dollar_value"]);
        let transactions: Vec<Transaction> = lines
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let mut fields = line.split_whitespace();
                let customer = fields.next().unwrap().to_owned();
                let date = day(fields.next().unwrap());
                let amount_cents = cents(fields.nth(1).unwrap());
                Transaction { customer, date, amount_cents }
            })
            .collect();
        assert_eq!(transactions.len(), 69_659);
        let summaries = summarize(&transactions, calibration_end());
        assert_eq!(summaries.len(), 23_570);
        let rows: Vec<PurchaseHistory> = summaries.iter().map(|s| s.history).collect();
        let fit = fit_bg_nbd(&rows).unwrap();
        let p = fit.params;
        assert_within_percent("r", p.r(), 0.2516, 1.0);
        assert_within_percent("alpha", p.alpha(), 4.7889, 1.0);
        assert_within_percent("a", p.a(), 0.7234, 1.0);
        assert_within_percent("b", p.b(), 2.1611, 1.0);
    }

    #[test]
    fn too_little_data_is_an_error_not_nan() {
        let rows = histories(&shipped_summary());
        let few = fit_bg_nbd(&rows[..19]).unwrap_err();
        assert!(matches!(few, ClvError::TooFewCustomers { found: 19, needed: 20, .. }), "{few:?}");
        assert!(few.to_string().contains("at least 20 customers, found 19"), "{few}");

        let one_timers: Vec<PurchaseHistory> = rows.iter().copied().filter(|h| h.frequency() == 0).take(100).collect();
        assert_eq!(one_timers.len(), 100);
        let none = fit_bg_nbd(&one_timers).unwrap_err();
        assert_eq!(none, ClvError::NoRepeatBuyer { model: "BG/NBD" });

        let spends: Vec<SpendHistory> =
            one_timers.iter().map(|h| SpendHistory::new(h.frequency(), 0.0).unwrap()).collect();
        assert_eq!(fit_gamma_gamma(&spends).unwrap_err(), ClvError::NoRepeatBuyer { model: "Gamma-Gamma" });
        let few_repeat: Vec<SpendHistory> =
            (0..10).map(|i| SpendHistory::new(1, 10.0 + f64::from(i)).unwrap()).collect();
        assert!(matches!(fit_gamma_gamma(&few_repeat), Err(ClvError::TooFewCustomers { found: 10, .. })));
    }

    #[test]
    fn impossible_inputs_are_refused_with_a_reason() {
        assert!(matches!(PurchaseHistory::new(1, 5.0, 4.0), Err(ClvError::InvalidHistory { .. })));
        assert!(matches!(PurchaseHistory::new(1, f64::NAN, 4.0), Err(ClvError::InvalidHistory { .. })));
        assert!(matches!(SpendHistory::new(2, 0.0), Err(ClvError::InvalidSpend { .. })));
        assert!(matches!(
            BgNbdParams::new(0.2, -1.0, 0.7, 2.0),
            Err(ClvError::InvalidParameter { parameter: "alpha", .. })
        ));
        let heavy_tail = GammaGammaParams::new(6.0, 0.9, 15.0).unwrap();
        let spend = SpendHistory::new(1, 10.0).unwrap();
        assert_eq!(heavy_tail.expected_average_spend(&spend), Err(ClvError::InfiniteMeanSpend { q: 0.9 }));
    }

    #[test]
    fn identical_customers_give_a_degenerate_fit_error_rather_than_nonsense() {
        // Everyone bought on two days a week apart: the likelihood keeps rising
        // towards a model without heterogeneity and no finite fit exists.
        let rows: Vec<PurchaseHistory> = (0..50).map(|_| PurchaseHistory::new(1, 1.0, 30.0).unwrap()).collect();
        let error = fit_bg_nbd(&rows).unwrap_err();
        assert!(matches!(error, ClvError::DegenerateFit { model: "BG/NBD", .. }), "{error:?}");
        assert!(error.to_string().contains("collect a longer history"), "{error}");
    }

    #[test]
    fn fits_do_not_depend_on_the_units_of_time_and_money() {
        let weeks = histories(&shipped_summary());
        let days: Vec<PurchaseHistory> = weeks
            .iter()
            .map(|h| PurchaseHistory::new(h.frequency(), h.recency_weeks() * 7.0, h.age_weeks() * 7.0).unwrap())
            .collect();
        let (in_weeks, in_days) = (fit_bg_nbd(&weeks).unwrap(), fit_bg_nbd(&days).unwrap());
        assert_within_percent("r", in_days.params.r(), in_weeks.params.r(), 0.01);
        assert_within_percent("alpha", in_days.params.alpha(), 7.0 * in_weeks.params.alpha(), 0.01);
        assert_within_percent("a", in_days.params.a(), in_weeks.params.a(), 0.01);
        assert_within_percent("b", in_days.params.b(), in_weeks.params.b(), 0.01);
        // Densities of t_x and T shrink by 7 per repeat purchase.
        let repeat_purchases: f64 = weeks.iter().map(|h| f64::from(h.frequency())).sum();
        let shift = in_weeks.log_likelihood - repeat_purchases * 7f64.ln();
        assert!((in_days.log_likelihood - shift).abs() < 1e-3, "{} vs {shift}", in_days.log_likelihood);

        let dollars: Vec<SpendHistory> = shipped_spends().into_iter().map(|(_, s)| s).collect();
        let cents: Vec<SpendHistory> =
            dollars.iter().map(|s| SpendHistory::new(s.frequency(), s.mean_spend() * 100.0).unwrap()).collect();
        let (in_dollars, in_cents) = (fit_gamma_gamma(&dollars).unwrap(), fit_gamma_gamma(&cents).unwrap());
        assert_within_percent("p", in_cents.params.p(), in_dollars.params.p(), 0.01);
        assert_within_percent("q", in_cents.params.q(), in_dollars.params.q(), 0.01);
        assert_within_percent("v", in_cents.params.v(), 100.0 * in_dollars.params.v(), 0.01);
    }

    #[test]
    fn forecast_covers_every_customer_in_cents() {
        let summaries = summarize(&sample_transactions(), calibration_end());
        let histories: Vec<PurchaseHistory> = summaries.iter().map(|s| s.history).collect();
        let spends: Vec<SpendHistory> = summaries.iter().map(|s| s.spend().unwrap()).collect();
        let purchases = fit_bg_nbd(&histories).unwrap().params;
        let spend_model = fit_gamma_gamma(&spends).unwrap().params;
        let forecasts = forecast(&summaries, &purchases, &spend_model, 52.0).unwrap();
        assert_eq!(forecasts.len(), summaries.len());
        assert_eq!(forecasts[0].customer, "0001");
        for f in &forecasts {
            assert!((0.0..=1.0).contains(&f.probability_alive), "{f:?}");
            assert!(f.expected_purchases >= 0.0 && f.expected_average_spend_cents > 0.0, "{f:?}");
            assert!((f.expected_value_cents - f.expected_purchases * f.expected_average_spend_cents).abs() < 1e-9);
        }
        // Spend in cents: customer 1's expected mean spend is about $24.66.
        assert_within_percent("customer 1 spend", forecasts[0].expected_average_spend_cents, 2465.86, 1.0);
    }
}
