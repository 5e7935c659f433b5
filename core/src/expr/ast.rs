//! The syntax tree of an expression (EXPRESSIONS.md §3) and its printing back to source text.
//!
//! Printing is fully parenthesized wherever precedence matters, so `Display` output always
//! parses back to an equal tree. Names (paths, functions) are resolved when a node is built,
//! so evaluation never compares strings to find out what a node means.

use std::fmt;
use std::sync::Arc;

use regex::Regex;

use super::functions::Builtin;
use crate::value::Value;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Ast {
    Literal(Literal),
    Path(Path),
    /// `base[index]`
    Index(Box<Ast>, Box<Ast>),
    Unary(UnaryOp, Box<Ast>),
    Binary(BinaryOp, Box<Ast>, Box<Ast>),
    /// `if cond then a else b`
    If(Box<Ast>, Box<Ast>, Box<Ast>),
    Call(Box<Call>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `not` / `!`
    Not,
    /// unary `-`
    Neg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

impl BinaryOp {
    /// Binding strength, loosest first (EXPRESSIONS.md §3: `or` = 1 … `**` = 6).
    pub fn precedence(self) -> u8 {
        match self {
            BinaryOp::Or => 1,
            BinaryOp::And => 2,
            BinaryOp::Eq
            | BinaryOp::Ne
            | BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge => 3,
            BinaryOp::Add | BinaryOp::Sub => 4,
            BinaryOp::Mul | BinaryOp::Div => 5,
            BinaryOp::Pow => 6,
        }
    }

    /// The operator as written in source and in error messages.
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Or => "or",
            BinaryOp::And => "and",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Pow => "**",
        }
    }

    pub const ALL: [BinaryOp; 13] = [
        BinaryOp::Or,
        BinaryOp::And,
        BinaryOp::Eq,
        BinaryOp::Ne,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
    ];
}

/// A literal value as it can be written in source: Null, Bool, a non-negative Int or Float
/// (the sign is the unary operator), a String or a whole-second Duration.
#[derive(Debug, Clone)]
pub struct Literal(Value);

impl Literal {
    /// `None` for values no literal can denote (negative numbers, NaN, DateTime, Array,
    /// sub-second durations).
    pub fn new(value: Value) -> Option<Literal> {
        let ok = match &value {
            Value::Null | Value::Bool(_) | Value::String(_) => true,
            Value::Int(i) => *i >= 0,
            Value::Float(f) => !f.is_nan() && f.is_sign_positive(),
            Value::Duration(d) => d.subsec_nanos() == 0,
            Value::DateTime(_) | Value::Array(_) => false,
        };
        ok.then_some(Literal(value))
    }

    pub fn value(&self) -> &Value {
        &self.0
    }
}

impl PartialEq for Literal {
    /// Floats compare by bits, everything else structurally.
    fn eq(&self, other: &Literal) -> bool {
        match (&self.0, &other.0) {
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (a, b) => a.identical(b),
        }
    }
}

/// What a field path resolves against (EXPRESSIONS.md §4), decided when the path is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathTarget {
    /// `event.<k>`: key `segments[1]` of the event map.
    Event,
    /// `entity.<k>`: key `segments[1]` of the entity map.
    Entity,
    /// a single identifier: the context variable `segments[0]`.
    Variable,
    /// `event.a.b…` / `entity.a.b…`: values hold no maps and segments cannot be array
    /// indices, so three or more segments always give Null.
    Nested,
    /// `<other>.<k>…`: an evaluation error.
    UnknownContext,
}

/// A dotted field path: `event.plan`, `entity.mrr`, `value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    segments: Vec<Box<str>>,
    target: PathTarget,
}

impl Path {
    /// `None` unless every segment is an identifier and the first is not a keyword.
    pub fn new<S: AsRef<str>>(segments: &[S]) -> Option<Path> {
        let first = segments.first()?.as_ref();
        if is_keyword(first) || !segments.iter().all(|s| is_identifier(s.as_ref())) {
            return None;
        }
        let target = match (first, segments.len()) {
            (_, 1) => PathTarget::Variable,
            ("event", 2) => PathTarget::Event,
            ("entity", 2) => PathTarget::Entity,
            ("event" | "entity", _) => PathTarget::Nested,
            _ => PathTarget::UnknownContext,
        };
        Some(Path {
            segments: segments.iter().map(|s| s.as_ref().into()).collect(),
            target,
        })
    }

    pub fn segments(&self) -> &[Box<str>] {
        &self.segments
    }

    pub fn target(&self) -> PathTarget {
        self.target
    }
}

/// A function call. The name is resolved to a built-in when the node is built; an unknown
/// name is kept and reported when the call is evaluated (EXPRESSIONS.md §6).
#[derive(Debug, Clone)]
pub struct Call {
    name: Box<str>,
    builtin: Option<Builtin>,
    args: Vec<Ast>,
    /// The compiled pattern of `regex_match`/`regex_extract` when it is a string literal, so
    /// the regex is compiled once per expression rather than once per evaluation.
    pattern: Option<Arc<Result<Regex, String>>>,
}

impl Call {
    /// `None` unless `name` is an identifier or `ns::name` with neither part a keyword.
    pub fn new(name: &str, args: Vec<Ast>) -> Option<Call> {
        let valid = |part: &str| is_identifier(part) && !is_keyword(part);
        let ok = match name.split_once("::") {
            Some((ns, fname)) => valid(ns) && valid(fname),
            None => valid(name),
        };
        if !ok {
            return None;
        }
        let builtin = Builtin::lookup(name);
        let pattern = match (builtin, args.as_slice()) {
            (Some(Builtin::RegexMatch | Builtin::RegexExtract), [_, Ast::Literal(lit)]) => {
                lit.value().as_str().map(|p| Arc::new(compile_regex(p)))
            }
            _ => None,
        };
        Some(Call {
            name: name.into(),
            builtin,
            args,
            pattern,
        })
    }

    /// The name as written, including the namespace (`str::trim`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn builtin(&self) -> Option<Builtin> {
        self.builtin
    }

    pub fn args(&self) -> &[Ast] {
        &self.args
    }

    pub(crate) fn literal_pattern(&self) -> Option<&Result<Regex, String>> {
        self.pattern.as_deref()
    }
}

impl PartialEq for Call {
    fn eq(&self, other: &Call) -> bool {
        self.name == other.name && self.args == other.args
    }
}

/// Compiles a pattern, keeping the error text for the evaluation error.
pub(crate) fn compile_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| e.to_string())
}

pub(crate) const KEYWORDS: [&str; 9] = [
    "and", "or", "not", "if", "then", "else", "true", "false", "null",
];

pub(crate) fn is_keyword(word: &str) -> bool {
    KEYWORDS.contains(&word)
}

/// ASCII identifier: a letter or `_`, then letters, digits or `_` (EXPRESSIONS.md §2.2).
pub(crate) fn is_identifier(word: &str) -> bool {
    let mut chars = word.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Ast {
    /// Nodes that need no parentheses as an operand: everything that is an atom or a postfix
    /// expression in the grammar.
    fn is_atomic(&self) -> bool {
        matches!(
            self,
            Ast::Literal(_) | Ast::Path(_) | Ast::Call(_) | Ast::Index(..)
        )
    }

    /// Writes the node as an operand: compound nodes in parentheses.
    fn fmt_operand(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_atomic() {
            fmt::Display::fmt(self, f)
        } else {
            write!(f, "({self})")
        }
    }
}

impl fmt::Display for Ast {
    /// Writes the node without outer parentheses; every operand is atomic or parenthesized,
    /// and delimited children (index, arguments, `if` parts) are written bare.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ast::Literal(lit) => write_literal(f, lit.value()),
            Ast::Path(path) => {
                for (i, segment) in path.segments.iter().enumerate() {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(segment)?;
                }
                Ok(())
            }
            Ast::Index(base, index) => {
                base.fmt_operand(f)?;
                write!(f, "[{index}]")
            }
            Ast::Unary(op, operand) => {
                f.write_str(match op {
                    UnaryOp::Not => "not ",
                    UnaryOp::Neg => "-",
                })?;
                operand.fmt_operand(f)
            }
            Ast::Binary(op, left, right) => {
                left.fmt_operand(f)?;
                write!(f, " {} ", op.symbol())?;
                right.fmt_operand(f)
            }
            Ast::If(cond, then, otherwise) => {
                write!(f, "if {cond} then {then} else {otherwise}")
            }
            Ast::Call(call) => {
                write!(f, "{}(", call.name)?;
                for (i, arg) in call.args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{arg}")?;
                }
                f.write_str(")")
            }
        }
    }
}

fn write_literal(f: &mut fmt::Formatter<'_>, value: &Value) -> fmt::Result {
    match value {
        Value::Null => f.write_str("null"),
        Value::Bool(b) => write!(f, "{b}"),
        Value::Int(i) => write!(f, "{i}"),
        Value::Float(x) => f.write_str(&float_literal(*x)),
        Value::String(s) => write_string_literal(f, s),
        Value::Duration(d) => write!(f, "{}s", d.as_secs()),
        // Not producible by the parser (see `Literal::new`); written as something readable.
        Value::DateTime(t) => write!(f, "'{}'", crate::value::timestamp_text(t)),
        Value::Array(_) => f.write_str(&value.to_text()),
    }
}

/// A float literal that parses back to the same bits: `digits.digits`. Rust's `Display`
/// already gives the shortest round-trip digits without exponent; infinity (from a literal
/// too large for f64) is written as a number that overflows again.
fn float_literal(x: f64) -> String {
    if x.is_infinite() {
        return format!("1{}.0", "0".repeat(309));
    }
    let text = x.to_string();
    if text.contains('.') {
        text
    } else {
        text + ".0"
    }
}

fn write_string_literal(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '"' => f.write_str("\\\"")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}
