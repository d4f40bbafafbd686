//! Customer lifetime value on a transaction file or on the live database:
//! read the purchases (rejected rows reported with their reason, the rest
//! used), fit BG/NBD and Gamma-Gamma (`relais_domain::clv`), and report the
//! parameters and each customer's forecast.

use std::io::BufRead;
use std::path::Path;

use chrono::NaiveDate;
use relais_domain::clv::{self, ClvError, CustomerForecast, Transaction};
use relais_domain::money::{currency_exponent, Money};
use serde::Serialize;

/// A row of a transaction file that was not used, and why.
#[derive(Debug, Clone, Serialize)]
pub struct RejectedRow {
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub reason: String,
}

/// Columns of a transaction file, found by their header names.
struct Columns {
    customer: usize,
    date: usize,
    amount: usize,
    comma: bool,
}

fn split(line: &str, comma: bool) -> Vec<&str> {
    if comma {
        line.split(',').map(|f| f.trim().trim_matches('"')).collect()
    } else {
        line.split_whitespace().collect()
    }
}

fn header(line: &str) -> Result<Columns, String> {
    let comma = line.contains(',');
    let names: Vec<String> = split(line, comma).iter().map(|n| n.to_ascii_lowercase()).collect();
    let find = |candidates: &[&str]| names.iter().position(|n| candidates.contains(&n.as_str()));
    let customer = find(&["customer_id", "customer", "client_id", "id", "user_id"]);
    let date = find(&["date", "day", "purchase_date", "order_date"]);
    let amount = find(&["amount", "dollar_value", "value", "total", "revenue", "spend"]);
    match (customer, date, amount) {
        (Some(customer), Some(date), Some(amount)) => Ok(Columns { customer, date, amount, comma }),
        _ => Err(format!(
            "the first line must name the columns: a customer (customer_id), a date (date) and an amount \
             (amount); found `{}`",
            line.trim()
        )),
    }
}

/// A date written `YYYY-MM-DD`, `YYYYMMDD` or as an ISO 8601 instant (its date).
fn parse_date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(text, "%Y%m%d"))
        .ok()
        .or_else(|| text.get(..10).and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()))
}

/// Read a transaction file (CSV, or columns separated by spaces, with a
/// header): the purchases, and the rows that could not be used.
pub fn read_transactions(path: &Path, currency: &str) -> anyhow::Result<(Vec<Transaction>, Vec<RejectedRow>)> {
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let first = lines.next().transpose()?.ok_or_else(|| anyhow::anyhow!("{} is empty", path.display()))?;
    let columns = header(&first).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut transactions = Vec::new();
    let mut rejected = Vec::new();
    for (n, line) in lines.enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let number = n + 2;
        let fields = split(&line, columns.comma);
        let field = |i: usize| fields.get(i).copied().unwrap_or_default();
        let customer = field(columns.customer);
        let reject = |reason: String| RejectedRow { line: number, reason };
        if customer.is_empty() {
            rejected.push(reject("no customer id".into()));
            continue;
        }
        let Some(date) = parse_date(field(columns.date)) else {
            rejected.push(reject(format!("`{}` is not a date (YYYY-MM-DD or YYYYMMDD)", field(columns.date))));
            continue;
        };
        let amount = field(columns.amount).replace(',', ".");
        let Some(money) = amount.parse::<f64>().ok().and_then(|a| Money::from_major(a, currency)) else {
            rejected.push(reject(format!("`{}` is not an amount", field(columns.amount))));
            continue;
        };
        if money.minor < 0 {
            rejected.push(reject(format!("the amount {amount} is negative (refunds are not purchases)")));
            continue;
        }
        transactions.push(Transaction { customer: customer.to_string(), date, amount_cents: money.minor });
    }
    Ok((transactions, rejected))
}

/// The fitted models and what they were fitted on.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    /// BG/NBD: shape of the purchase rates (per week).
    pub r: f64,
    /// BG/NBD: scale of the purchase rates (weeks).
    pub alpha: f64,
    /// BG/NBD: dropout beta parameter a.
    pub a: f64,
    /// BG/NBD: dropout beta parameter b.
    pub b: f64,
    /// BG/NBD log-likelihood at the fit.
    pub log_likelihood: f64,
    /// Gamma-Gamma: shape of the spend per purchase.
    pub p: f64,
    /// Gamma-Gamma: shape of the spend heterogeneity.
    pub q: f64,
    /// Gamma-Gamma: scale of the spend heterogeneity, in major units of the currency.
    pub v: f64,
    /// Customers with a purchase in the calibration period.
    pub customers: usize,
    /// Customers with at least one repeat purchase.
    pub repeat_buyers: usize,
    /// Repeat buyers in the Gamma-Gamma fit (those whose repeat purchases cost more than nothing).
    pub spend_customers: usize,
    /// Last day of the calibration period.
    pub calibration_end: NaiveDate,
    /// Horizon of the forecasts, weeks.
    pub horizon_weeks: f64,
    /// Currency of the amounts.
    pub currency: String,
    /// Expected value of all customers over the horizon, major units.
    pub expected_value_total: f64,
}

/// Fit both models on `transactions` and forecast every customer over `horizon_weeks`.
pub fn fit(
    transactions: &[Transaction],
    calibration_end: NaiveDate,
    horizon_weeks: f64,
    currency: &str,
) -> Result<(FitReport, Vec<CustomerForecast>), ClvError> {
    let summaries = clv::summarize(transactions, calibration_end);
    let histories: Vec<_> = summaries.iter().map(|s| s.history).collect();
    let purchases = clv::fit_bg_nbd(&histories)?;
    // Repeat buyers whose repeat purchases cost nothing have no place in a
    // gamma-distributed spend (ln 0): they are left out of the spend fit, and
    // forecast with the population's mean spend.
    let repeat_buyers = summaries.iter().filter(|s| s.history.frequency() > 0).count();
    let spends: Vec<_> =
        summaries.iter().filter(|s| s.history.frequency() > 0).filter_map(|s| s.spend().ok()).collect();
    let spend = clv::fit_gamma_gamma(&spends)?;
    let population = clv::SpendHistory::new(0, 0.0)?;
    let forecasts = summaries
        .iter()
        .map(|summary| {
            let history = summary.spend().unwrap_or(population);
            let expected_purchases = purchases.params.expected_purchases(&summary.history, horizon_weeks)?;
            let expected_average_spend_cents = spend.params.expected_average_spend(&history)?;
            Ok(CustomerForecast {
                customer: summary.customer.clone(),
                probability_alive: purchases.params.probability_alive(&summary.history),
                expected_purchases,
                expected_average_spend_cents,
                expected_value_cents: expected_purchases * expected_average_spend_cents,
            })
        })
        .collect::<Result<Vec<_>, ClvError>>()?;
    let major = 10f64.powi(currency_exponent(currency) as i32);
    let report = FitReport {
        r: purchases.params.r(),
        alpha: purchases.params.alpha(),
        a: purchases.params.a(),
        b: purchases.params.b(),
        log_likelihood: purchases.log_likelihood,
        p: spend.params.p(),
        q: spend.params.q(),
        // Fitted on minor units; v is a scale, so it converts like money.
        v: spend.params.v() / major,
        customers: summaries.len(),
        repeat_buyers,
        spend_customers: spends.len(),
        calibration_end,
        horizon_weeks,
        currency: currency.to_string(),
        expected_value_total: forecasts.iter().map(|f| f.expected_value_cents).sum::<f64>() / major,
    };
    Ok((report, forecasts))
}

/// Write forecasts as CSV: customer, probability alive, expected purchases,
/// expected average spend and expected value (major units).
pub fn write_forecasts(path: &Path, forecasts: &[CustomerForecast], currency: &str) -> anyhow::Result<()> {
    let major = 10f64.powi(currency_exponent(currency) as i32);
    let mut writer = csv::Writer::from_path(path)?;
    writer.write_record([
        "customer",
        "probability_alive",
        "expected_purchases",
        "expected_average_spend",
        "expected_value",
    ])?;
    for f in forecasts {
        writer.write_record([
            f.customer.clone(),
            format!("{:.6}", f.probability_alive),
            format!("{:.6}", f.expected_purchases),
            format!("{:.4}", f.expected_average_spend_cents / major),
            format!("{:.4}", f.expected_value_cents / major),
        ])?;
    }
    writer.flush()?;
    Ok(())
}

/// RFM scores of the database's buyers (`Engine::purchases`) as of `now`.
pub fn database_rfm(
    purchases: &[(relais_domain::CustomerId, chrono::DateTime<chrono::Utc>, i64)],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<relais_domain::rfm::CustomerRfm>, relais_domain::rfm::RfmError> {
    let ids: Vec<String> = purchases.iter().map(|(c, _, _)| c.to_string()).collect();
    relais_domain::rfm::rfm(
        purchases.iter().zip(&ids).map(|((_, at, amount), id)| relais_domain::rfm::Purchase {
            customer: id,
            at: *at,
            amount: *amount,
        }),
        now,
    )
}

/// How many customers fall in each named RFM group, in the map's order.
pub fn rfm_groups(scored: &[relais_domain::rfm::CustomerRfm]) -> Vec<crate::http::analytics::RfmGroupCount> {
    relais_domain::rfm::RfmGroup::ALL
        .iter()
        .map(|group| crate::http::analytics::RfmGroupCount {
            group: group.as_str().to_string(),
            label: group.label().to_string(),
            customers: scored.iter().filter(|c| c.rfm.group() == *group).count(),
        })
        .collect()
}

/// Write each buyer's RFM values, scores and group as CSV.
pub fn write_rfm(path: &Path, scored: &[relais_domain::rfm::CustomerRfm]) -> anyhow::Result<()> {
    let mut writer = csv::Writer::from_path(path)?;
    writer.write_record(["customer", "recency_seconds", "frequency", "monetary_minor", "r", "f", "m", "group"])?;
    for c in scored {
        let r = &c.rfm;
        writer.write_record([
            c.customer.clone(),
            r.recency_seconds.to_string(),
            r.frequency.to_string(),
            r.monetary.to_string(),
            r.r.to_string(),
            r.f.to_string(),
            r.m.to_string(),
            r.group().as_str().to_string(),
        ])?;
    }
    writer.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_rows_are_reported_and_the_rest_used() {
        let folder = tempfile::tempdir().unwrap();
        let file = folder.path().join("t.csv");
        std::fs::write(
            &file,
            "customer_id,date,amount\nc1,2024-01-02,12.50\nc1,20240110,3\nc2,yesterday,5\nc3,2024-01-03,abc\nc4,2024-01-04,-2\n,2024-01-05,1\n",
        )
        .unwrap();
        let (transactions, rejected) = read_transactions(&file, "EUR").unwrap();
        assert_eq!(transactions.len(), 2);
        assert_eq!(transactions[0].amount_cents, 1250);
        assert_eq!(rejected.iter().map(|r| r.line).collect::<Vec<_>>(), vec![4, 5, 6, 7]);
        assert!(rejected[0].reason.contains("not a date"));
        std::fs::write(&file, "a;b;c\n1;2;3\n").unwrap();
        assert!(read_transactions(&file, "EUR").unwrap_err().to_string().contains("must name the columns"));
    }

    #[test]
    fn too_little_data_is_a_clear_error_not_nan() {
        let day = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
        let few: Vec<Transaction> =
            (0..5).map(|i| Transaction { customer: format!("c{i}"), date: day, amount_cents: 100 }).collect();
        let error = fit(&few, day, 39.0, "EUR").unwrap_err().to_string();
        assert!(error.contains("at least"), "{error}");
    }
}
