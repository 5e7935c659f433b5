//! Evaluation of a tree against a `Scope` (EXPRESSIONS.md §4–5).
//!
//! Values are produced as `Cow`: literals and field lookups are borrowed, so a guard such as
//! `event.plan != entity.plan and event.mrr > 10` evaluates without cloning or allocating.
//! Every operand is evaluated before its operator (no short-circuit), Null is an ordinary
//! operand that most operators reject, and integer overflow is an error, never a wrap.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::time::Duration;

use chrono::TimeDelta;

use super::ast::{Ast, BinaryOp, Path, PathTarget, UnaryOp};
use super::{functions, EvalError, Scope};
use crate::value::{Instant, Value};

pub(crate) static NULL: Value = Value::Null;

/// Largest String an operation may produce (16 MiB). Nested `replace`/`join` calls can grow a
/// string exponentially with the size of the expression; past this size the operation fails
/// instead of exhausting memory.
pub(crate) const MAX_STRING_BYTES: usize = 16 << 20;

/// An evaluation failure, boxed so that `Result<(), Fail>` fits in a register.
pub(crate) type Fail = Box<EvalError>;

/// A value slot written by [`eval_into`].
pub(crate) type Slot<'a> = Cow<'a, Value>;

pub(crate) fn err(message: impl Into<String>) -> Fail {
    Box::new(EvalError {
        message: message.into(),
    })
}

/// A fresh slot for [`eval_into`] to fill.
pub(crate) fn slot<'a>() -> Slot<'a> {
    Cow::Borrowed(&NULL)
}

/// Evaluates `ast` into `out`. Results are written in place rather than returned: moving
/// freshly written enums between stack frames was the main cost of evaluating a guard.
pub(crate) fn eval_into<'a, S: Scope + ?Sized>(
    ast: &'a Ast,
    scope: &'a S,
    out: &mut Slot<'a>,
) -> Result<(), Fail> {
    match ast {
        Ast::Literal(lit) => *out = Cow::Borrowed(lit.value()),
        Ast::Path(path) => *out = Cow::Borrowed(lookup(path, scope)?),
        Ast::Binary(op, left, right) => {
            let mut a = slot();
            eval_into(left, scope, &mut a)?;
            let mut b = slot();
            eval_into(right, scope, &mut b)?;
            *out = Cow::Owned(match op {
                BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Pow => {
                    arithmetic(*op, &a, &b)?
                }
                _ => Value::Bool(predicate(*op, &a, &b)?),
            });
        }
        Ast::Unary(op, operand) => {
            let mut v = slot();
            eval_into(operand, scope, &mut v)?;
            *out = Cow::Owned(unary(*op, &v)?);
        }
        Ast::If(cond, then, otherwise) => {
            let mut c = slot();
            eval_into(cond, scope, &mut c)?;
            match *c {
                Value::Bool(true) => eval_into(then, scope, out)?,
                Value::Bool(false) => eval_into(otherwise, scope, out)?,
                ref other => {
                    return Err(err(format!(
                        "'if' condition must be Bool, got {}",
                        other.kind()
                    )))
                }
            }
        }
        Ast::Index(base, index) => {
            let mut b = slot();
            eval_into(base, scope, &mut b)?;
            let mut i = slot();
            eval_into(index, scope, &mut i)?;
            *out = eval_index(b, &i)?;
        }
        Ast::Call(call) => functions::call(call, scope, out)?,
    }
    Ok(())
}

fn lookup<'a, S: Scope + ?Sized>(path: &'a Path, scope: &'a S) -> Result<&'a Value, Fail> {
    let segments = path.segments();
    let found = match path.target() {
        PathTarget::Event => scope.event_field(&segments[1]),
        PathTarget::Entity => scope.entity_field(&segments[1]),
        PathTarget::Variable => scope.variable(&segments[0]),
        PathTarget::Nested => None,
        PathTarget::UnknownContext => return Err(unknown_context(path)),
    };
    Ok(found.unwrap_or(&NULL))
}

#[cold]
fn unknown_context(path: &Path) -> Fail {
    let segments = path.segments();
    err(format!(
        "Unknown context '{}' in '{}': expected 'event' or 'entity'",
        segments[0],
        segments.join(".")
    ))
}

/// `base[index]` (EXPRESSIONS.md §5.7). An element of a borrowed array stays borrowed.
fn eval_index<'a>(base: Slot<'a>, index: &Value) -> Result<Slot<'a>, Fail> {
    let i = match index {
        Value::Int(i) => *i,
        other => return Err(err(format!("Index must be Int, got {}", other.kind()))),
    };
    match base {
        Cow::Borrowed(Value::Array(items)) => Ok(Cow::Borrowed(element(items, i).unwrap_or(&NULL))),
        Cow::Owned(Value::Array(items)) => {
            Ok(Cow::Owned(element(&items, i).cloned().unwrap_or_default()))
        }
        base => match base.as_ref() {
            Value::String(s) => {
                let count = s.chars().count();
                let found = resolve_index(i, count).and_then(|i| s.chars().nth(i));
                Ok(Cow::Owned(
                    found.map_or(Value::Null, |c| Value::str(c.to_string())),
                ))
            }
            other => Err(err(format!(
                "Cannot index into {}: expected Array or String",
                other.kind()
            ))),
        },
    }
}

fn element(items: &[Value], i: i64) -> Option<&Value> {
    resolve_index(i, items.len()).and_then(|i| items.get(i))
}

/// A position counted from the end when negative; `None` when out of range.
fn resolve_index(i: i64, len: usize) -> Option<usize> {
    let len = i64::try_from(len).ok()?;
    let resolved = if i < 0 { len.checked_add(i)? } else { i };
    (0..len).contains(&resolved).then_some(resolved as usize)
}

fn unary(op: UnaryOp, v: &Value) -> Result<Value, Fail> {
    match (op, v) {
        (UnaryOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
        (UnaryOp::Not, other) => Err(err(format!("'not' requires Bool, got {}", other.kind()))),
        (UnaryOp::Neg, Value::Int(i)) => i
            .checked_neg()
            .map(Value::Int)
            .ok_or_else(|| err("Integer overflow in unary '-'")),
        (UnaryOp::Neg, Value::Float(f)) => Ok(Value::Float(-f)),
        (UnaryOp::Neg, other) => Err(err(format!(
            "Unary '-' requires Int or Float, got {}",
            other.kind()
        ))),
    }
}

/// The Bool-valued operators: `and`, `or`, equality and ordering.
fn predicate(op: BinaryOp, a: &Value, b: &Value) -> Result<bool, Fail> {
    Ok(match op {
        BinaryOp::And | BinaryOp::Or => match (a, b) {
            (Value::Bool(x), Value::Bool(y)) => {
                if op == BinaryOp::And {
                    *x && *y
                } else {
                    *x || *y
                }
            }
            _ => return Err(logic_error(op, a, b)),
        },
        BinaryOp::Eq => a.loose_eq(b),
        BinaryOp::Ne => !a.loose_eq(b),
        _ => {
            let ordering = compare(a, b)?;
            match op {
                BinaryOp::Lt => ordering == Ordering::Less,
                BinaryOp::Le => ordering != Ordering::Greater,
                BinaryOp::Gt => ordering == Ordering::Greater,
                _ => ordering != Ordering::Less,
            }
        }
    })
}

#[cold]
fn logic_error(op: BinaryOp, a: &Value, b: &Value) -> Fail {
    err(format!(
        "'{}' requires Bool on both sides, got {} and {}",
        op.symbol(),
        a.kind(),
        b.kind()
    ))
}

/// Ordering (EXPRESSIONS.md §5.3): numbers (mixed as Float), Strings by code point,
/// DateTimes, Durations. NaN and every other pairing are errors.
fn compare(a: &Value, b: &Value) -> Result<Ordering, Fail> {
    let floats = |x: f64, y: f64| {
        x.partial_cmp(&y)
            .ok_or_else(|| err("Cannot compare NaN values"))
    };
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Ok(x.cmp(y)),
        (Value::Float(x), Value::Float(y)) => floats(*x, *y),
        (Value::Int(x), Value::Float(y)) => floats(*x as f64, *y),
        (Value::Float(x), Value::Int(y)) => floats(*x, *y as f64),
        // Byte order of UTF-8 is code point order.
        (Value::String(x), Value::String(y)) => Ok(x.as_bytes().cmp(y.as_bytes())),
        (Value::DateTime(x), Value::DateTime(y)) => Ok(x.cmp(y)),
        (Value::Duration(x), Value::Duration(y)) => Ok(x.cmp(y)),
        _ => Err(compare_error(a, b)),
    }
}

#[cold]
fn compare_error(a: &Value, b: &Value) -> Fail {
    err(format!(
        "Cannot compare {} with {}: both sides must be numbers, Strings, DateTimes or Durations",
        a.kind(),
        b.kind()
    ))
}

/// `+ - * / **` (EXPRESSIONS.md §5.1).
#[inline(never)]
fn arithmetic(op: BinaryOp, a: &Value, b: &Value) -> Result<Value, Fail> {
    use BinaryOp::*;
    match (a, op, b) {
        (Value::Int(x), _, Value::Int(y)) => int_arithmetic(op, *x, *y).map(Value::Int),
        (Value::Float(x), _, Value::Float(y)) => float_arithmetic(op, *x, *y),
        (Value::Int(x), _, Value::Float(y)) => float_arithmetic(op, *x as f64, *y),
        (Value::Float(x), _, Value::Int(y)) => float_arithmetic(op, *x, *y as f64),
        (Value::String(x), Add, Value::String(y)) => {
            check_string_len(x.len().saturating_add(y.len()))?;
            let mut s = String::with_capacity(x.len() + y.len());
            s.push_str(x);
            s.push_str(y);
            Ok(Value::str(s))
        }
        (Value::DateTime(t), Add | Sub, Value::Duration(d)) => shift(*t, op, *d),
        (Value::DateTime(x), Sub, Value::DateTime(y)) => x
            .signed_duration_since(*y)
            .to_std()
            .map(Value::Duration)
            .map_err(|_| err("Negative duration: the first DateTime is before the second")),
        (Value::Duration(x), Add, Value::Duration(y)) => x
            .checked_add(*y)
            .map(Value::Duration)
            .ok_or_else(|| err("Duration overflow in '+'")),
        (Value::Duration(x), Sub, Value::Duration(y)) => x
            .checked_sub(*y)
            .map(Value::Duration)
            .ok_or_else(|| err("Negative duration: subtraction result is below zero")),
        (Value::Duration(d), Mul, Value::Int(n)) | (Value::Int(n), Mul, Value::Duration(d)) => {
            scale(*d, *n)
        }
        _ => Err(err(format!(
            "Cannot apply '{}' to {} and {}",
            op.symbol(),
            a.kind(),
            b.kind()
        ))),
    }
}

fn int_arithmetic(op: BinaryOp, x: i64, y: i64) -> Result<i64, Fail> {
    let result = match op {
        BinaryOp::Add => x.checked_add(y),
        BinaryOp::Sub => x.checked_sub(y),
        BinaryOp::Mul => x.checked_mul(y),
        BinaryOp::Div => {
            if y == 0 {
                return Err(err("Division by zero"));
            }
            x.checked_div(y)
        }
        _ => {
            if y < 0 {
                return Err(err(format!(
                    "Cannot raise Int to negative power {y}: use a Float base"
                )));
            }
            int_pow(x, y)
        }
    };
    result.ok_or_else(|| err(format!("Integer overflow in '{}'", op.symbol())))
}

/// `x ** y` for `y >= 0`; exponents beyond `u32` only fit for bases -1, 0 and 1.
fn int_pow(x: i64, y: i64) -> Option<i64> {
    match u32::try_from(y) {
        Ok(y) => x.checked_pow(y),
        Err(_) => match x {
            0 | 1 => Some(x),
            -1 => Some(if y % 2 == 0 { 1 } else { -1 }),
            _ => None,
        },
    }
}

fn float_arithmetic(op: BinaryOp, x: f64, y: f64) -> Result<Value, Fail> {
    Ok(Value::Float(match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => {
            if y == 0.0 {
                return Err(err("Division by zero"));
            }
            x / y
        }
        _ => x.powf(y),
    }))
}

fn shift(t: Instant, op: BinaryOp, d: Duration) -> Result<Value, Fail> {
    let delta =
        TimeDelta::from_std(d).map_err(|_| err("Duration too large for DateTime arithmetic"))?;
    let shifted = if op == BinaryOp::Add {
        t.checked_add_signed(delta)
    } else {
        t.checked_sub_signed(delta)
    };
    shifted
        .map(Value::DateTime)
        .ok_or_else(|| err("DateTime out of range"))
}

/// `Duration * Int`: the factor must be non-negative and the product must fit.
fn scale(d: Duration, n: i64) -> Result<Value, Fail> {
    if n < 0 {
        return Err(err(format!(
            "Cannot multiply a Duration by a negative factor ({n})"
        )));
    }
    let nanos = d
        .as_nanos()
        .checked_mul(n as u128)
        .ok_or_else(|| err("Duration overflow in '*'"))?;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| err("Duration overflow in '*'"))?;
    Ok(Value::Duration(Duration::new(
        secs,
        (nanos % 1_000_000_000) as u32,
    )))
}

pub(crate) fn check_string_len(len: usize) -> Result<(), Fail> {
    if len > MAX_STRING_BYTES {
        return Err(err(format!(
            "String result too long ({len} bytes, limit {MAX_STRING_BYTES})"
        )));
    }
    Ok(())
}
