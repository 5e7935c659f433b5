//! The expression language (EXPRESSIONS.md): guards, conditions, computed properties, mapping
//! `compute` and identity `normalize`. An expression is parsed once, when its definition is
//! registered ([`Expr::parse`]), and evaluated many times against a [`Scope`] that lends the
//! event, entity and variable values without copying them.

mod ast;
mod eval;
mod functions;
mod lexer;
mod parser;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

pub use ast::{Ast, BinaryOp, Call, Literal, Path, PathTarget, UnaryOp};
pub use functions::{Arity, Builtin};
pub use parser::MAX_DEPTH;

use crate::value::{Instant, Value};

/// A parsed expression: its source text and tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    text: String,
    ast: Ast,
}

impl Expr {
    /// Parses `text`. Only syntax is checked: unknown functions, arities and kinds are
    /// evaluation errors (see [`Expr::warnings`] for the first two).
    pub fn parse(text: &str) -> Result<Expr, ParseError> {
        let ast = parser::parse(text)?;
        Ok(Expr {
            text: text.to_string(),
            ast,
        })
    }

    /// The source text, exactly as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn ast(&self) -> &Ast {
        &self.ast
    }

    /// Evaluates the expression.
    pub fn eval<S: Scope + ?Sized>(&self, scope: &S) -> Result<Value, EvalError> {
        self.eval_cow(scope).map(Cow::into_owned)
    }

    /// Evaluates the expression, borrowing the result when it is a literal or a value of the
    /// scope (no clone).
    pub fn eval_cow<'a, S: Scope + ?Sized>(
        &'a self,
        scope: &'a S,
    ) -> Result<Cow<'a, Value>, EvalError> {
        let mut out = eval::slot();
        match eval::eval_into(&self.ast, scope, &mut out) {
            Ok(()) => Ok(out),
            Err(e) => Err(*e),
        }
    }

    /// Calls that will fail whenever they are evaluated: unknown function names and wrong
    /// argument counts (reported as registration warnings, DEFINITIONS.md §7.3 PROPOSED).
    /// Messages are those of the evaluation errors.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        collect_warnings(&self.ast, &mut out);
        out
    }
}

/// Unknown function names and wrong argument counts in `expr` (see [`Expr::warnings`]).
pub fn call_problems(expr: &Expr) -> Vec<String> {
    expr.warnings()
}

fn collect_warnings(ast: &Ast, out: &mut Vec<String>) {
    match ast {
        Ast::Literal(_) | Ast::Path(_) => {}
        Ast::Unary(_, x) => collect_warnings(x, out),
        Ast::Index(a, b) | Ast::Binary(_, a, b) => {
            collect_warnings(a, out);
            collect_warnings(b, out);
        }
        Ast::If(a, b, c) => {
            collect_warnings(a, out);
            collect_warnings(b, out);
            collect_warnings(c, out);
        }
        Ast::Call(call) => {
            match call.builtin() {
                None => out.push(format!("Unknown function '{}'", call.name())),
                Some(f) if !f.arity().accepts(call.args().len()) => {
                    out.push(f.arity().error_message(f.name(), call.args().len()))
                }
                Some(_) => {}
            }
            for arg in call.args() {
                collect_warnings(arg, out);
            }
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The values an expression can see (EXPRESSIONS.md §4).
pub trait Scope {
    /// `event.<key>` lookups; None = missing (evaluates to Null).
    fn event_field(&self, key: &str) -> Option<&Value> {
        let _ = key;
        None
    }

    /// `entity.<key>` lookups.
    fn entity_field(&self, key: &str) -> Option<&Value> {
        let _ = key;
        None
    }

    /// Single-identifier variables (`value` in identity normalize; also `event`/`entity`
    /// written alone).
    fn variable(&self, name: &str) -> Option<&Value> {
        let _ = name;
        None
    }

    /// The instant `now()` returns: the job's fixed `as_of` (EXPRESSIONS.md §6.3 PROPOSED).
    fn now(&self) -> Instant;
}

/// A syntax error, found when the expression is registered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} at position {position} in expression '{text}'")]
pub struct ParseError {
    pub text: String,
    /// character offset, 0-based
    pub position: usize,
    pub message: String,
}

/// An error while evaluating (EXPRESSIONS.md §5–6; stable fragments in RESULTS.md §11.1).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    pub message: String,
}

/// A scope owning its maps; convenient for tests and one-off evaluations.
#[derive(Debug, Clone)]
pub struct MapScope {
    pub event: HashMap<String, Value>,
    pub entity: HashMap<String, Value>,
    pub vars: HashMap<String, Value>,
    pub now: Instant,
}

impl MapScope {
    /// Empty maps, `now()` = `now`.
    pub fn new(now: Instant) -> MapScope {
        MapScope {
            event: HashMap::new(),
            entity: HashMap::new(),
            vars: HashMap::new(),
            now,
        }
    }
}

impl Scope for MapScope {
    fn event_field(&self, key: &str) -> Option<&Value> {
        self.event.get(key)
    }
    fn entity_field(&self, key: &str) -> Option<&Value> {
        self.entity.get(key)
    }
    fn variable(&self, name: &str) -> Option<&Value> {
        self.vars.get(name)
    }
    fn now(&self) -> Instant {
        self.now
    }
}

/// A scope lending maps owned elsewhere (normalized event data, entity properties).
#[derive(Debug, Clone, Copy)]
pub struct RefScope<'m> {
    pub event: Option<&'m HashMap<String, Value>>,
    pub entity: Option<&'m HashMap<String, Value>>,
    pub vars: Option<&'m HashMap<String, Value>>,
    pub now: Instant,
}

impl Scope for RefScope<'_> {
    fn event_field(&self, key: &str) -> Option<&Value> {
        self.event?.get(key)
    }
    fn entity_field(&self, key: &str) -> Option<&Value> {
        self.entity?.get(key)
    }
    fn variable(&self, name: &str) -> Option<&Value> {
        self.vars?.get(name)
    }
    fn now(&self) -> Instant {
        self.now
    }
}

/// A scope in which every field and variable is missing.
#[derive(Debug, Clone, Copy)]
pub struct EmptyScope {
    pub now: Instant,
}

impl Scope for EmptyScope {
    fn now(&self) -> Instant {
        self.now
    }
}
