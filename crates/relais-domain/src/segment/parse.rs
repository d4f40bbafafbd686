//! The segment language's syntax: tokens and a recursive-descent parser that
//! keeps the byte span of every piece, so errors point at the place.
//!
//! ```text
//! expr     := and ("or" and)*
//! and      := unary ("and" unary)*
//! unary    := "not" unary | atom
//! atom     := "(" expr ")" | operand [compare]
//! compare  := op literal | ["not"] "in" "(" literal ("," literal)* ")"
//! operand  := name | name "(" [arg ("," arg)*] ")"
//! arg      := "event" string | literal
//! literal  := number | string | duration (30d, 12w) | "true" | "false"
//! op       := "=" | "!=" | "<" | "<=" | ">" | ">="
//! ```

use super::{ErrorKind, SegmentError};

/// A byte range of the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    pub(crate) fn to(self, other: Span) -> Span {
        Span { start: self.start, end: other.end }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CmpOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A literal value as written.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A decimal number, kept as text so money stays exact.
    Number(String),
    /// A quoted string.
    Text(String),
    /// A window in days (`30d`, `4w`).
    Days(i64),
    /// `true` or `false`.
    Bool(bool),
}

impl Literal {
    /// What kind of literal this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Literal::Number(_) => "a number",
            Literal::Text(_) => "a string",
            Literal::Days(_) => "a window",
            Literal::Bool(_) => "true or false",
        }
    }
}

/// A function argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// `event "Name"`.
    Event(String, Span),
    /// A literal.
    Literal(Literal, Span),
}

/// What a condition reads: a field or a function call.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A field name.
    Field(String, Span),
    /// A call with its arguments.
    Call {
        /// The function.
        name: String,
        /// Its arguments.
        args: Vec<Arg>,
        /// The whole call.
        span: Span,
    },
}

impl Operand {
    /// Where it is written.
    pub fn span(&self) -> Span {
        match self {
            Operand::Field(_, span) | Operand::Call { span, .. } => *span,
        }
    }
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// All of them.
    And(Vec<Expr>),
    /// Any of them.
    Or(Vec<Expr>),
    /// The opposite.
    Not(Box<Expr>),
    /// `operand op literal`, with the literal's span.
    Compare(Operand, CmpOp, Literal, Span),
    /// `operand [not] in (literals)`.
    In(Operand, Vec<(Literal, Span)>, bool),
    /// An operand standing alone, which must be true or false.
    Bare(Operand),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Name(String),
    Text(String),
    Number(String),
    Days(i64),
    Op(CmpOp),
    Open,
    Close,
    Comma,
    End,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Name(name) => format!("`{name}`"),
            Token::Text(text) => format!("the string \"{text}\""),
            Token::Number(n) => format!("the number {n}"),
            Token::Days(d) => format!("the window {d}d"),
            Token::Op(op) => format!("`{}`", op.as_str()),
            Token::Open => "`(`".into(),
            Token::Close => "`)`".into(),
            Token::Comma => "`,`".into(),
            Token::End => "the end of the segment".into(),
        }
    }
}

fn syntax(source: &str, span: Span, message: String) -> SegmentError {
    SegmentError::at(source, ErrorKind::Syntax, span, message)
}

fn tokens(source: &str) -> Result<Vec<(Token, Span)>, SegmentError> {
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let token = match c {
            b'(' => {
                i += 1;
                Token::Open
            }
            b')' => {
                i += 1;
                Token::Close
            }
            b',' => {
                i += 1;
                Token::Comma
            }
            b'=' => {
                i += if bytes.get(i + 1) == Some(&b'=') { 2 } else { 1 };
                Token::Op(CmpOp::Eq)
            }
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                i += 2;
                Token::Op(CmpOp::Ne)
            }
            b'<' | b'>' => {
                let or_equal = bytes.get(i + 1) == Some(&b'=');
                i += if or_equal { 2 } else { 1 };
                Token::Op(match (c, or_equal) {
                    (b'<', false) => CmpOp::Lt,
                    (b'<', true) => CmpOp::Le,
                    (b'>', false) => CmpOp::Gt,
                    _ => CmpOp::Ge,
                })
            }
            b'"' => {
                let mut text = String::new();
                i += 1;
                loop {
                    match source[i..].chars().next() {
                        None => {
                            return Err(syntax(
                                source,
                                Span { start, end: source.len() },
                                "this string is not closed: expected `\"`".into(),
                            ))
                        }
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => match source[i + 1..].chars().next() {
                            Some(escaped @ ('"' | '\\')) => {
                                text.push(escaped);
                                i += 2;
                            }
                            _ => {
                                return Err(syntax(
                                    source,
                                    Span { start: i, end: i + 1 },
                                    "unknown escape: only \\\" and \\\\ are allowed in strings".into(),
                                ))
                            }
                        },
                        Some(ch) => {
                            text.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                Token::Text(text)
            }
            b'0'..=b'9' | b'-' | b'.' => {
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                    i += 1;
                }
                let number = &source[start..i];
                let unit = bytes.get(i).copied();
                let unit_ends = |at: usize| bytes.get(at).is_none_or(|b| !(b.is_ascii_alphanumeric() || *b == b'_'));
                if matches!(unit, Some(b'd' | b'w')) && unit_ends(i + 1) {
                    i += 1;
                    let count: i64 = number.parse().map_err(|_| {
                        syntax(
                            source,
                            Span { start, end: i },
                            "a window is a whole number of days or weeks, such as 30d or 4w".into(),
                        )
                    })?;
                    Token::Days(if unit == Some(b'w') { count.saturating_mul(7) } else { count })
                } else {
                    let valid = number.trim_start_matches('-').split('.').count() <= 2
                        && number.trim_start_matches('-').split('.').all(|part| !part.is_empty())
                        && unit_ends(i);
                    if !valid {
                        let end = (i..bytes.len()).find(|&j| !bytes[j].is_ascii_alphanumeric()).unwrap_or(bytes.len());
                        return Err(syntax(
                            source,
                            Span { start, end: end.max(i) },
                            format!(
                                "`{}` is not a number: expected digits with an optional decimal point, \
                                 or a window such as 30d",
                                &source[start..end.max(i)]
                            ),
                        ));
                    }
                    Token::Number(number.to_string())
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                Token::Name(source[start..i].to_string())
            }
            _ => {
                let ch = source[i..].chars().next().unwrap_or('?');
                return Err(syntax(
                    source,
                    Span { start, end: start + ch.len_utf8() },
                    format!("unexpected character `{ch}`: expected a condition such as orders_90d >= 2"),
                ));
            }
        };
        out.push((token, Span { start, end: i }));
    }
    out.push((Token::End, Span { start: source.len(), end: source.len() }));
    Ok(out)
}

/// Parse a segment's source into an expression.
pub fn parse(source: &str) -> Result<Expr, SegmentError> {
    let tokens = tokens(source)?;
    if tokens.len() == 1 {
        return Err(syntax(
            source,
            Span { start: 0, end: 0 },
            "the segment is empty: expected a condition such as orders_90d >= 2".into(),
        ));
    }
    let mut parser = Parser { source, tokens, at: 0 };
    let expr = parser.or()?;
    let (token, span) = parser.peek();
    if *token != Token::End {
        let message = match token {
            Token::Close => "this `)` has no matching `(`".to_string(),
            other => format!("expected `and`, `or` or the end of the segment, found {}", other.describe()),
        };
        return Err(syntax(source, span, message));
    }
    Ok(expr)
}

struct Parser<'a> {
    source: &'a str,
    tokens: Vec<(Token, Span)>,
    at: usize,
}

fn is_keyword(token: &Token, word: &str) -> bool {
    matches!(token, Token::Name(name) if name.eq_ignore_ascii_case(word))
}

const RESERVED: [&str; 7] = ["and", "or", "not", "in", "event", "true", "false"];

impl Parser<'_> {
    fn peek(&self) -> (&Token, Span) {
        let (token, span) = &self.tokens[self.at];
        (token, *span)
    }

    fn next(&mut self) -> (Token, Span) {
        let item = self.tokens[self.at].clone();
        if self.at + 1 < self.tokens.len() {
            self.at += 1;
        }
        item
    }

    fn eat_keyword(&mut self, word: &str) -> bool {
        if is_keyword(self.peek().0, word) {
            self.next();
            true
        } else {
            false
        }
    }

    fn error(&self, span: Span, message: String) -> SegmentError {
        syntax(self.source, span, message)
    }

    fn expect(&mut self, wanted: Token, what: &str) -> Result<Span, SegmentError> {
        let (token, span) = self.next();
        if token == wanted {
            Ok(span)
        } else {
            Err(self.error(span, format!("expected {what}, found {}", token.describe())))
        }
    }

    fn or(&mut self) -> Result<Expr, SegmentError> {
        let mut parts = vec![self.and()?];
        while self.eat_keyword("or") {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Expr::Or(parts) })
    }

    fn and(&mut self) -> Result<Expr, SegmentError> {
        let mut parts = vec![self.unary()?];
        while self.eat_keyword("and") {
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Expr::And(parts) })
    }

    fn unary(&mut self) -> Result<Expr, SegmentError> {
        if self.eat_keyword("not") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Expr, SegmentError> {
        if *self.peek().0 == Token::Open {
            let (_, open) = self.next();
            let inner = self.or()?;
            let (token, span) = self.next();
            if token != Token::Close {
                return Err(self.error(
                    span,
                    format!(
                        "expected `)` to close the `(` at column {}, found {}",
                        column_of(self.source, open.start),
                        token.describe()
                    ),
                ));
            }
            return Ok(inner);
        }
        let operand = self.operand()?;
        let (token, span) = self.peek();
        match token {
            Token::Op(op) => {
                let op = *op;
                self.next();
                let (literal, literal_span) = self.literal(&format!("a value after `{}`", op.as_str()))?;
                Ok(Expr::Compare(operand, op, literal, literal_span))
            }
            token if is_keyword(token, "in") => {
                self.next();
                Ok(Expr::In(operand, self.list()?, false))
            }
            token if is_keyword(token, "not") => {
                let not_span = span;
                self.next();
                if !self.eat_keyword("in") {
                    return Err(self.error(not_span, "`not` after a value must be followed by `in (…)`".into()));
                }
                Ok(Expr::In(operand, self.list()?, true))
            }
            _ => Ok(Expr::Bare(operand)),
        }
    }

    fn list(&mut self) -> Result<Vec<(Literal, Span)>, SegmentError> {
        self.expect(Token::Open, "`(` starting the list of values after `in`")?;
        let mut values = vec![self.literal("a value in the list")?];
        loop {
            let (token, span) = self.next();
            match token {
                Token::Comma => values.push(self.literal("a value after `,`")?),
                Token::Close => return Ok(values),
                other => {
                    return Err(self.error(span, format!("expected `,` or `)` in the list, found {}", other.describe())))
                }
            }
        }
    }

    fn literal(&mut self, what: &str) -> Result<(Literal, Span), SegmentError> {
        let (token, span) = self.next();
        let literal = match token {
            Token::Number(n) => Literal::Number(n),
            Token::Text(t) => Literal::Text(t),
            Token::Days(d) => Literal::Days(d),
            Token::Name(ref name) if name.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Token::Name(ref name) if name.eq_ignore_ascii_case("false") => Literal::Bool(false),
            Token::Name(name) => {
                return Err(self.error(
                    span,
                    format!("expected {what}, found `{name}`: text values are written in double quotes, \"{name}\""),
                ))
            }
            other => return Err(self.error(span, format!("expected {what}, found {}", other.describe()))),
        };
        Ok((literal, span))
    }

    fn operand(&mut self) -> Result<Operand, SegmentError> {
        let (token, span) = self.next();
        let name = match token {
            Token::Name(name) if !RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) => name,
            Token::Name(name) => {
                return Err(
                    self.error(span, format!("expected a field or a function such as orders_90d, found `{name}`"))
                )
            }
            other => {
                return Err(self.error(
                    span,
                    format!("expected a field or a function such as orders_90d, found {}", other.describe()),
                ))
            }
        };
        if *self.peek().0 != Token::Open {
            return Ok(Operand::Field(name, span));
        }
        self.next();
        let mut args = Vec::new();
        if *self.peek().0 == Token::Close {
            let (_, close) = self.next();
            return Ok(Operand::Call { name, args, span: span.to(close) });
        }
        loop {
            if is_keyword(self.peek().0, "event") {
                let (_, event_span) = self.next();
                let (token, text_span) = self.next();
                match token {
                    Token::Text(event) => args.push(Arg::Event(event, event_span.to(text_span))),
                    other => {
                        return Err(self.error(
                            text_span,
                            format!(
                                "expected the event's name in double quotes after `event`, found {}",
                                other.describe()
                            ),
                        ))
                    }
                }
            } else {
                let (literal, literal_span) = self.literal(&format!("an argument of `{name}`"))?;
                args.push(Arg::Literal(literal, literal_span));
            }
            let (token, next_span) = self.next();
            match token {
                Token::Comma => continue,
                Token::Close => return Ok(Operand::Call { name, args, span: span.to(next_span) }),
                other => {
                    return Err(self.error(
                        next_span,
                        format!("expected `,` or `)` in the arguments of `{name}`, found {}", other.describe()),
                    ))
                }
            }
        }
    }
}

/// The 1-based column (in characters) of a byte offset on its line.
pub(crate) fn column_of(source: &str, offset: usize) -> usize {
    let offset = offset.min(source.len());
    let line_start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
    source[line_start..offset].chars().count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(source: &str) -> SegmentError {
        parse(source).expect_err("should not parse")
    }

    #[test]
    fn and_binds_tighter_than_or_and_not_tighter_than_and() {
        let expr = parse("a = 1 or not b = 2 and c").unwrap();
        let Expr::Or(parts) = expr else { panic!("expected or") };
        assert!(matches!(parts[0], Expr::Compare(..)));
        let Expr::And(inner) = &parts[1] else { panic!("expected and") };
        assert!(matches!(inner[0], Expr::Not(_)));
        assert!(matches!(inner[1], Expr::Bare(Operand::Field(ref f, _)) if f == "c"));
    }

    #[test]
    fn the_issue_examples_parse() {
        parse(r#"orders_90d >= 2 and last_channel = "store" and city in ("Lyon", "Nantes") and not consent("email")"#)
            .unwrap();
        let Expr::Compare(Operand::Call { name, args, .. }, CmpOp::Ge, Literal::Number(n), _) =
            parse(r#"count(event "Review Submitted", 30d) >= 1"#).unwrap()
        else {
            panic!("expected a comparison of a call")
        };
        assert_eq!((name.as_str(), n.as_str()), ("count", "1"));
        assert!(matches!(&args[0], Arg::Event(e, _) if e == "Review Submitted"));
        assert!(matches!(args[1], Arg::Literal(Literal::Days(30), _)));
    }

    #[test]
    fn weeks_are_days_and_keywords_ignore_case() {
        let expr = parse(r#"count(event "X", 4w) > 0 AND NOT x IN ("a")"#).unwrap();
        let Expr::And(parts) = expr else { panic!() };
        assert!(
            matches!(&parts[0], Expr::Compare(Operand::Call { args, .. }, ..) if args[1] == Arg::Literal(Literal::Days(28), Span { start: 17, end: 19 }))
        );
    }

    #[test]
    fn errors_point_at_the_place_and_say_what_was_expected() {
        let e = error("orders_90d >= ");
        assert_eq!((e.line, e.column), (1, 15));
        assert!(e.message.contains("expected a value after `>=`"), "{e}");

        let e = error("orders_90d >= 2 and (city = \"Lyon\"");
        assert!(e.message.contains("expected `)` to close the `(` at column 21"), "{e}");

        let e = error("city = Lyon");
        assert_eq!(e.column, 8);
        assert!(e.message.contains("\"Lyon\""), "{e}");

        let e = error("orders >= 2\n  and city ~ \"x\"");
        assert_eq!((e.line, e.column), (2, 12));

        let e = error("orders >= 2 city = \"Lyon\"");
        assert!(e.message.contains("expected `and`, `or` or the end"), "{e}");

        assert!(error("").message.contains("empty"));
        assert!(error("\"open").message.contains("not closed"));
        assert!(error("orders >= 1.2.3").message.contains("not a number"));
        assert!(error("and = 1").message.contains("expected a field"));
        assert!(error("x in (\"a\" \"b\")").message.contains("expected `,` or `)`"));
        assert!(error("orders > 1)").message.contains("no matching `(`"));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let e = error("ville = \"Lyon\" and é");
        assert_eq!(e.column, 20);
    }
}
