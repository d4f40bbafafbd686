//! Checking a parsed segment: names resolved to columns, values typed and
//! converted (money to minor units, windows to days), and every column's data
//! class checked against the reader's role.

use super::eval::Node;
use super::parse::{Arg, CmpOp, Expr, Literal, Operand, Span};
use super::{Column, ErrorKind, ScoreColumn, SegmentError, TraitColumn, MAX_WINDOW_DAYS};
use crate::consent::{ConsentChannel, Purpose};
use crate::privacy::{Classification, DataClass};
use crate::rfm::RfmGroup;
use crate::{Channel, Role};

/// Who reads, and how values are written.
#[derive(Debug, Clone, Copy)]
pub struct CheckContext<'a> {
    /// The reader's role: a segment may only read classes it may see.
    pub role: Role,
    /// The data classes of profile paths.
    pub classification: &'a Classification,
    /// Decimal places of the organisation's currency (2 for euros).
    pub currency_exponent: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Int,
    Money,
    Text,
    Channel,
    Bool,
    Group,
    Score,
}

impl Type {
    fn describe(self) -> &'static str {
        match self {
            Type::Int => "a whole number",
            Type::Money => "an amount of money",
            Type::Text => "text",
            Type::Channel => "a channel name",
            Type::Bool => "true or false",
            Type::Group => "an RFM group name",
            Type::Score => "a score from 1 to 5",
        }
    }
}

/// One field of the language, for documentation and suggestions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDoc {
    /// Its name in segments.
    pub name: &'static str,
    /// What values it holds.
    pub kind: &'static str,
    /// What it means.
    pub description: &'static str,
}

const TRAITS: [(&str, TraitColumn, Type, &str); 15] = [
    ("orders", TraitColumn::Orders, Type::Int, "completed orders, ever"),
    ("refunds", TraitColumn::Refunds, Type::Int, "refunds, ever"),
    ("events", TraitColumn::Events, Type::Int, "events, ever"),
    ("revenue", TraitColumn::Revenue, Type::Money, "net revenue, ever, in the organisation's currency"),
    ("average_basket", TraitColumn::AverageBasket, Type::Money, "mean completed-order value"),
    ("orders_30d", TraitColumn::Orders30d, Type::Int, "completed orders in the last 30 days"),
    ("orders_90d", TraitColumn::Orders90d, Type::Int, "completed orders in the last 90 days"),
    ("orders_365d", TraitColumn::Orders365d, Type::Int, "completed orders in the last 365 days"),
    ("revenue_90d", TraitColumn::Revenue90d, Type::Money, "net revenue in the last 90 days"),
    ("revenue_365d", TraitColumn::Revenue365d, Type::Money, "net revenue in the last 365 days"),
    ("last_channel", TraitColumn::LastChannel, Type::Channel, "channel of the latest event"),
    ("favourite_store", TraitColumn::FavouriteStore, Type::Text, "the store with the most events"),
    ("days_since_last_order", TraitColumn::DaysSinceLastOrder, Type::Int, "days since the latest order"),
    ("days_since_last_seen", TraitColumn::DaysSinceLastSeen, Type::Int, "days since the latest event"),
    ("days_since_first_seen", TraitColumn::DaysSinceFirstSeen, Type::Int, "days since the first event"),
];

const SCORES: [(&str, ScoreColumn, Type, &str); 5] = [
    ("rfm_group", ScoreColumn::Group, Type::Group, "the RFM group (champions, loyal, at_risk…)"),
    ("rfm_r", ScoreColumn::R, Type::Score, "RFM recency score, 1 to 5"),
    ("rfm_f", ScoreColumn::F, Type::Score, "RFM frequency score, 1 to 5"),
    ("rfm_m", ScoreColumn::M, Type::Score, "RFM monetary score, 1 to 5"),
    ("clv", ScoreColumn::Clv, Type::Money, "expected value over the next 52 weeks (BG/NBD and Gamma-Gamma)"),
];

/// Profile attributes with a short name: the paths under `traits` tried in order.
const PROFILE: [(&str, &[&str], &str); 3] = [
    ("city", &["address.city", "city"], "the profile's city"),
    ("postal_code", &["address.postalCode", "address.postcode", "postalCode", "postcode"], "the profile's postal code"),
    ("country", &["address.country", "country"], "the profile's country"),
];

const FUNCTIONS: [(&str, &str, &str); 4] = [
    ("count", "count(event \"Name\", 30d)", "events of that name in the window (1d to 730d), a whole number"),
    ("consent", "consent(\"email\")", "whether consent stands now (a purpose, or email, sms, push)"),
    ("used_channel", "used_channel(\"store\")", "whether the person ever used the channel"),
    ("trait", "trait(\"address.city\")", "any clear profile attribute by its path, as text"),
];

/// Every field and function of the language, for documentation and the builder.
pub fn field_catalogue() -> Vec<FieldDoc> {
    let kind = |t: Type| t.describe();
    TRAITS
        .iter()
        .map(|(name, _, t, d)| FieldDoc { name, kind: kind(*t), description: d })
        .chain(SCORES.iter().map(|(name, _, t, d)| FieldDoc { name, kind: kind(*t), description: d }))
        .chain(PROFILE.iter().map(|(name, _, d)| FieldDoc { name, kind: "text", description: d }))
        .chain(FUNCTIONS.iter().map(|(_, call, d)| FieldDoc { name: call, kind: "function", description: d }))
        .collect()
}

struct Checker<'s, 'c> {
    source: &'s str,
    context: &'c CheckContext<'c>,
    columns: &'c mut Vec<Column>,
}

pub(super) fn check(
    source: &str,
    expr: &Expr,
    context: &CheckContext<'_>,
    columns: &mut Vec<Column>,
) -> Result<Node, SegmentError> {
    Checker { source, context, columns }.expr(expr)
}

impl Checker<'_, '_> {
    fn error(&self, kind: ErrorKind, span: Span, message: String) -> SegmentError {
        SegmentError::at(self.source, kind, span, message)
    }

    fn column(&mut self, column: Column) -> usize {
        match self.columns.iter().position(|c| *c == column) {
            Some(index) => index,
            None => {
                self.columns.push(column);
                self.columns.len() - 1
            }
        }
    }

    fn expr(&mut self, expr: &Expr) -> Result<Node, SegmentError> {
        Ok(match expr {
            Expr::And(parts) => Node::All(parts.iter().map(|p| self.expr(p)).collect::<Result<_, _>>()?),
            Expr::Or(parts) => Node::Any(parts.iter().map(|p| self.expr(p)).collect::<Result<_, _>>()?),
            Expr::Not(inner) => Node::Not(Box::new(self.expr(inner)?)),
            Expr::Bare(operand) => {
                let (column, ty) = self.operand(operand)?;
                if ty != Type::Bool {
                    return Err(self.error(
                        ErrorKind::Type,
                        operand.span(),
                        format!(
                            "{} is {}, not true or false: compare it, for example `{} >= 1`",
                            self.name(operand),
                            ty.describe(),
                            self.name(operand).trim_matches('`')
                        ),
                    ));
                }
                Node::Int { column, op: CmpOp::Eq, value: 1 }
            }
            Expr::Compare(operand, op, literal, span) => {
                let (column, ty) = self.operand(operand)?;
                self.compare(operand, column, ty, *op, literal, *span)?
            }
            Expr::In(operand, values, negated) => {
                let (column, ty) = self.operand(operand)?;
                match ty {
                    Type::Text | Type::Channel | Type::Group => {
                        let values = values
                            .iter()
                            .map(|(literal, span)| self.text_value(operand, ty, literal, *span))
                            .collect::<Result<Vec<_>, _>>()?;
                        Node::TextIn { column, values, negated: *negated }
                    }
                    Type::Int | Type::Money | Type::Score => {
                        let values = values
                            .iter()
                            .map(|(literal, span)| self.number_value(operand, ty, literal, *span))
                            .collect::<Result<Vec<_>, _>>()?;
                        Node::IntIn { column, values, negated: *negated }
                    }
                    Type::Bool => {
                        return Err(self.error(
                            ErrorKind::Type,
                            operand.span(),
                            format!("{} is true or false: use it alone or with `not`", self.name(operand)),
                        ))
                    }
                }
            }
        })
    }

    fn name(&self, operand: &Operand) -> String {
        let span = operand.span();
        format!("`{}`", &self.source[span.start..span.end])
    }

    fn compare(
        &mut self,
        operand: &Operand,
        column: usize,
        ty: Type,
        op: CmpOp,
        literal: &Literal,
        span: Span,
    ) -> Result<Node, SegmentError> {
        let (literal_span, span) = (span, operand.span().to(span));
        match ty {
            Type::Text | Type::Channel | Type::Group => {
                let negated = match op {
                    CmpOp::Eq => false,
                    CmpOp::Ne => true,
                    _ => {
                        return Err(self.error(
                            ErrorKind::Type,
                            span,
                            format!(
                                "{} is {}: it can only be compared with `=`, `!=` or `in (…)`, not `{}`",
                                self.name(operand),
                                ty.describe(),
                                op.as_str()
                            ),
                        ))
                    }
                };
                let value = self.text_value(operand, ty, literal, literal_span)?;
                Ok(Node::TextIn { column, values: vec![value], negated })
            }
            Type::Bool => {
                let Literal::Bool(value) = literal else {
                    return Err(self.error(
                        ErrorKind::Type,
                        literal_span,
                        format!("{} is true or false, not {}", self.name(operand), literal.kind()),
                    ));
                };
                let value = match op {
                    CmpOp::Eq => *value,
                    CmpOp::Ne => !*value,
                    _ => {
                        return Err(self.error(
                            ErrorKind::Type,
                            span,
                            format!("{} is true or false: use `=` or `!=`", self.name(operand)),
                        ))
                    }
                };
                Ok(Node::Int { column, op: CmpOp::Eq, value: i64::from(value) })
            }
            Type::Int | Type::Money | Type::Score => {
                let value = self.number_value(operand, ty, literal, literal_span)?;
                Ok(Node::Int { column, op, value })
            }
        }
    }

    fn text_value(&self, operand: &Operand, ty: Type, literal: &Literal, span: Span) -> Result<String, SegmentError> {
        let Literal::Text(text) = literal else {
            return Err(self.error(
                ErrorKind::Type,
                span,
                format!(
                    "{} is {}: expected a string in double quotes, found {}",
                    self.name(operand),
                    ty.describe(),
                    literal.kind()
                ),
            ));
        };
        match ty {
            Type::Channel if Channel::parse(text).is_none() => Err(self.error(
                ErrorKind::Type,
                span,
                format!(
                    "\"{text}\" is not a channel: expected one of {}",
                    Channel::ALL.iter().map(|c| format!("\"{}\"", c.as_str())).collect::<Vec<_>>().join(", ")
                ),
            )),
            Type::Group if RfmGroup::parse(text).is_none() => Err(self.error(
                ErrorKind::Type,
                span,
                format!(
                    "\"{text}\" is not an RFM group: expected one of {}",
                    RfmGroup::ALL.iter().map(|g| format!("\"{}\"", g.as_str())).collect::<Vec<_>>().join(", ")
                ),
            )),
            _ => Ok(text.clone()),
        }
    }

    fn number_value(&self, operand: &Operand, ty: Type, literal: &Literal, span: Span) -> Result<i64, SegmentError> {
        let Literal::Number(text) = literal else {
            let hint = if matches!(literal, Literal::Days(_)) { " (a window goes inside count(…))" } else { "" };
            return Err(self.error(
                ErrorKind::Type,
                span,
                format!(
                    "{} is {}: expected a number, found {}{hint}",
                    self.name(operand),
                    ty.describe(),
                    literal.kind()
                ),
            ));
        };
        let places = if ty == Type::Money { self.context.currency_exponent } else { 0 };
        let value = decimal_to_units(text, places).ok_or_else(|| {
            let what = if places == 0 {
                "a whole number".to_string()
            } else {
                format!("an amount with at most {places} decimal places")
            };
            self.error(
                ErrorKind::Type,
                span,
                format!("{} is {}: expected {what}, found {text}", self.name(operand), ty.describe()),
            )
        })?;
        if ty == Type::Score && !(1..=5).contains(&value) {
            return Err(self.error(ErrorKind::Range, span, format!("RFM scores go from 1 to 5, not {value}")));
        }
        Ok(value)
    }

    fn readable(&self, span: Span, class: DataClass, what: &str) -> Result<(), SegmentError> {
        if !self.context.classification.may_read(self.context.role, class) {
            return Err(self.error(
                ErrorKind::Forbidden,
                span,
                format!(
                    "{what} is {} data, which the {} role may not read",
                    class.as_str(),
                    self.context.role.as_str()
                ),
            ));
        }
        if self.context.classification.encrypted(class) {
            return Err(self.error(
                ErrorKind::Forbidden,
                span,
                format!(
                    "{what} is {} data, encrypted at rest with each person's key: segments read clear classes only",
                    class.as_str()
                ),
            ));
        }
        Ok(())
    }

    fn profile(&mut self, span: Span, paths: Vec<String>, what: &str) -> Result<(usize, Type), SegmentError> {
        for path in &paths {
            self.readable(span, self.context.classification.class_of(&format!("traits.{path}")), what)?;
        }
        Ok((self.column(Column::Profile(paths)), Type::Text))
    }

    fn operand(&mut self, operand: &Operand) -> Result<(usize, Type), SegmentError> {
        match operand {
            Operand::Field(name, span) => {
                let lower = name.to_ascii_lowercase();
                if let Some((_, column, ty, _)) = TRAITS.iter().find(|t| t.0 == lower) {
                    self.readable(*span, DataClass::Internal, &format!("`{name}`"))?;
                    return Ok((self.column(Column::Trait(*column)), *ty));
                }
                if let Some((_, column, ty, _)) = SCORES.iter().find(|t| t.0 == lower) {
                    self.readable(*span, DataClass::Internal, &format!("`{name}`"))?;
                    return Ok((self.column(Column::Score(*column)), *ty));
                }
                if let Some((_, paths, _)) = PROFILE.iter().find(|t| t.0 == lower) {
                    let paths = paths.iter().map(|p| p.to_string()).collect();
                    return self.profile(*span, paths, &format!("`{name}`"));
                }
                if FUNCTIONS.iter().any(|f| f.0 == lower) {
                    let usage = FUNCTIONS.iter().find(|f| f.0 == lower).map_or("", |f| f.1);
                    return Err(self.error(ErrorKind::Type, *span, format!("`{name}` is a function: write {usage}")));
                }
                Err(self.error(ErrorKind::Type, *span, unknown_field(name)))
            }
            Operand::Call { name, args, span } => self.call(name, args, *span),
        }
    }

    fn call(&mut self, name: &str, args: &[Arg], span: Span) -> Result<(usize, Type), SegmentError> {
        let lower = name.to_ascii_lowercase();
        let Some((_, usage, _)) = FUNCTIONS.iter().find(|f| f.0 == lower) else {
            let known = FUNCTIONS.iter().map(|f| f.0).collect::<Vec<_>>().join(", ");
            return Err(self.error(
                ErrorKind::Type,
                span,
                format!("unknown function `{name}`: the functions are {known}"),
            ));
        };
        let arity = |n: usize| -> Result<(), SegmentError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(self.error(ErrorKind::Type, span, format!("`{name}` takes {n} argument(s): write {usage}")))
            }
        };
        match lower.as_str() {
            "count" => {
                arity(2)?;
                let Arg::Event(event, event_span) = &args[0] else {
                    return Err(self.error(
                        ErrorKind::Type,
                        arg_span(&args[0]),
                        format!("expected `event \"Name\"` first: write {usage}"),
                    ));
                };
                if event.trim().is_empty() {
                    return Err(self.error(ErrorKind::Type, *event_span, "the event's name is empty".into()));
                }
                let Arg::Literal(Literal::Days(days), days_span) = &args[1] else {
                    return Err(self.error(
                        ErrorKind::Type,
                        arg_span(&args[1]),
                        format!("expected a window such as 30d second: write {usage}"),
                    ));
                };
                if !(1..=MAX_WINDOW_DAYS).contains(days) {
                    return Err(self.error(
                        ErrorKind::Range,
                        *days_span,
                        format!("the window must be between 1d and {MAX_WINDOW_DAYS}d, not {days}d"),
                    ));
                }
                self.readable(span, DataClass::Internal, "an event count")?;
                Ok((self.column(Column::EventCount { name: event.clone(), days: *days }), Type::Int))
            }
            "consent" => {
                arity(1)?;
                let text = self.text_arg(&args[0], usage)?;
                let (purpose, channel) = consent_of(&text).ok_or_else(|| {
                    let purposes = [
                        "email",
                        "sms",
                        "push",
                        "profiling",
                        "personalised_offers",
                        "partner_sharing",
                        "email_marketing",
                    ];
                    self.error(
                        ErrorKind::Type,
                        arg_span(&args[0]),
                        format!(
                            "\"{text}\" is not a consent purpose: expected one of {}",
                            purposes.map(|p| format!("\"{p}\"")).join(", ")
                        ),
                    )
                })?;
                self.readable(span, DataClass::Internal, "a consent")?;
                Ok((self.column(Column::Consent(purpose, channel)), Type::Bool))
            }
            "used_channel" => {
                arity(1)?;
                let text = self.text_arg(&args[0], usage)?;
                let channel = Channel::parse(&text).ok_or_else(|| {
                    self.error(
                        ErrorKind::Type,
                        arg_span(&args[0]),
                        format!(
                            "\"{text}\" is not a channel: expected one of {}",
                            Channel::ALL.iter().map(|c| format!("\"{}\"", c.as_str())).collect::<Vec<_>>().join(", ")
                        ),
                    )
                })?;
                self.readable(span, DataClass::Internal, "a channel")?;
                Ok((self.column(Column::ChannelUsed(channel)), Type::Bool))
            }
            _ => {
                arity(1)?;
                let path = self.text_arg(&args[0], usage)?;
                let valid = !path.is_empty()
                    && path
                        .split('.')
                        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-'));
                if !valid {
                    return Err(self.error(
                        ErrorKind::Type,
                        arg_span(&args[0]),
                        format!("\"{path}\" is not an attribute path: expected names joined by dots, such as \"address.city\""),
                    ));
                }
                self.profile(span, vec![path.clone()], &format!("`traits.{path}`"))
            }
        }
    }

    fn text_arg(&self, arg: &Arg, usage: &str) -> Result<String, SegmentError> {
        match arg {
            Arg::Literal(Literal::Text(text), _) => Ok(text.clone()),
            other => Err(self.error(
                ErrorKind::Type,
                arg_span(other),
                format!("expected a string in double quotes: write {usage}"),
            )),
        }
    }
}

fn arg_span(arg: &Arg) -> Span {
    match arg {
        Arg::Event(_, span) | Arg::Literal(_, span) => *span,
    }
}

fn consent_of(text: &str) -> Option<(Purpose, ConsentChannel)> {
    Some(match text {
        "email" | "email_marketing" => (Purpose::EmailMarketing, ConsentChannel::Email),
        "sms" => (Purpose::Sms, ConsentChannel::Sms),
        "push" => (Purpose::Push, ConsentChannel::Push),
        other => (Purpose::parse(other)?, ConsentChannel::Any),
    })
}

fn unknown_field(name: &str) -> String {
    let names = TRAITS.iter().map(|t| t.0).chain(SCORES.iter().map(|t| t.0)).chain(PROFILE.iter().map(|t| t.0));
    let closest = names
        .map(|candidate| (strsim::levenshtein(&name.to_ascii_lowercase(), candidate), candidate))
        .min()
        .filter(|(distance, _)| *distance <= 3);
    match closest {
        Some((_, suggestion)) => format!("unknown field `{name}`: did you mean `{suggestion}`?"),
        None => format!(
            "unknown field `{name}`: expected a computed trait (orders, revenue, orders_90d, last_channel…), an RFM \
             score (rfm_group…), a profile attribute (city, or trait(\"path\")) or a function (count, consent, \
             used_channel)"
        ),
    }
}

/// A decimal written in text as an integer number of `10^-places` units, or
/// `None` if it has more decimals than that or does not fit.
fn decimal_to_units(text: &str, places: u32) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if fraction.len() > places as usize || (whole.is_empty() && fraction.is_empty()) {
        return None;
    }
    let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut fraction_units: i64 = if fraction.is_empty() { 0 } else { fraction.parse().ok()? };
    for _ in fraction.len()..places as usize {
        fraction_units = fraction_units.checked_mul(10)?;
    }
    let units = whole.checked_mul(10_i64.checked_pow(places)?)?.checked_add(fraction_units)?;
    Some(if negative { -units } else { units })
}

#[cfg(test)]
mod tests {
    use super::super::{ErrorKind, Segment};
    use super::*;

    fn compile(source: &str, role: Role) -> Result<Segment, SegmentError> {
        let classification = Classification::default();
        Segment::compile(source, &CheckContext { role, classification: &classification, currency_exponent: 2 })
    }

    fn error(source: &str) -> SegmentError {
        compile(source, Role::Marketing).expect_err("should be refused")
    }

    #[test]
    fn money_is_read_in_the_currency_and_kept_exact() {
        assert_eq!(decimal_to_units("99.9", 2), Some(9990));
        assert_eq!(decimal_to_units("-0.05", 2), Some(-5));
        assert_eq!(decimal_to_units("100", 2), Some(10000));
        assert_eq!(decimal_to_units("1.005", 2), None);
        assert_eq!(decimal_to_units("3", 0), Some(3));
        assert_eq!(decimal_to_units("2.5", 0), None);
    }

    #[test]
    fn the_issue_example_compiles_to_its_columns() {
        let segment = compile(
            r#"orders_90d >= 2 and last_channel = "store" and city in ("Lyon", "Nantes") and not consent("email")"#,
            Role::Marketing,
        )
        .unwrap();
        assert_eq!(segment.columns().len(), 4);
        assert!(segment.moves_with_time());
        assert!(!compile(r#"city = "Lyon""#, Role::Marketing).unwrap().moves_with_time());
    }

    #[test]
    fn type_errors_say_what_the_field_holds_and_point_at_the_value() {
        let e = error(r#"orders_90d >= "two""#);
        assert_eq!(e.kind, ErrorKind::Type);
        assert_eq!(e.column, 15);
        assert!(e.message.contains("whole number"), "{e}");

        let e = error("orders >= 2.5");
        assert!(e.message.contains("expected a whole number, found 2.5"), "{e}");

        let e = error(r#"city > "Lyon""#);
        assert!(e.message.contains("only be compared with `=`"), "{e}");

        let e = error(r#"last_channel = "pigeon""#);
        assert!(e.message.contains("not a channel") && e.message.contains("\"store\""), "{e}");

        let e = error("ordres_90d > 1");
        assert!(e.message.contains("did you mean `orders_90d`?"), "{e}");
        assert_eq!((e.start, e.end), (0, 10));

        assert!(error("orders_90d").message.contains("not true or false"));
        assert!(error(r#"rfm_group = "best""#).message.contains("\"champions\""));
        assert!(error("revenue >= 10.001").message.contains("at most 2 decimal places"));
        assert!(error("orders > 30d").message.contains("window goes inside count"));
        assert!(error(r#"count("Order Completed", 30d) > 1"#).message.contains("expected `event \"Name\"` first"));
        assert!(error("count > 1").message.contains("is a function"));
        assert!(error(r#"consent("fax")"#).message.contains("not a consent purpose"));
    }

    #[test]
    fn windows_out_of_range_are_refused() {
        let e = error(r#"count(event "Order Completed", 731d) > 0"#);
        assert_eq!(e.kind, ErrorKind::Range);
        assert!(e.message.contains("between 1d and 730d"), "{e}");
        assert_eq!(error(r#"count(event "X", 0d) > 0"#).kind, ErrorKind::Range);
        assert_eq!(error("rfm_r = 6").kind, ErrorKind::Range);
    }

    #[test]
    fn a_segment_cannot_read_what_the_role_may_not_see() {
        let e = error(r#"trait("email") = "ana@example.fr""#);
        assert_eq!(e.kind, ErrorKind::Forbidden);
        assert!(e.message.contains("personal"), "{e}");
        // Clear classes read by the role are allowed.
        compile(r#"trait("address.city") = "Lyon""#, Role::Analyst).unwrap();
        // The ingest role reads no profile data at all.
        assert_eq!(compile("orders > 1", Role::Ingest).unwrap_err().kind, ErrorKind::Forbidden);
    }
}
