//! The 36 built-in functions (EXPRESSIONS.md §6).
//!
//! Arguments are all evaluated, left to right, before a call; then the name is checked (an
//! unknown name is an evaluation error, never a parse error), then the arity, then the kinds.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{Datelike, NaiveDateTime, TimeZone, Timelike, Utc};
use regex::Regex;

use super::ast::{compile_regex, Call};
use super::eval::{check_string_len, err, eval_into, slot, Fail, Slot};
use super::Scope;
use crate::value::{float_text, Instant, Value};

/// A built-in function, resolved from its name when the call is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builtin {
    ToLowercase,
    ToUppercase,
    Trim,
    Substring,
    StartsWith,
    EndsWith,
    Contains,
    Replace,
    RegexMatch,
    RegexExtract,
    ToString,
    Len,
    Abs,
    Floor,
    Ceil,
    Round,
    Min,
    Max,
    Now,
    DaysBetween,
    HoursBetween,
    MinutesBetween,
    DaysSince,
    YearOf,
    MonthOf,
    DayOf,
    HourOf,
    MinuteOf,
    DayOfWeek,
    DateTrunc,
    ParseDatetime,
    Split,
    Join,
    ToInt,
    ToFloat,
    Coalesce,
}

/// How many arguments a function takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    Exactly(usize),
    AtLeast(usize),
}

impl Arity {
    pub fn accepts(self, n: usize) -> bool {
        match self {
            Arity::Exactly(k) => n == k,
            Arity::AtLeast(k) => n >= k,
        }
    }

    /// The evaluation error for a call with `got` arguments.
    pub fn error_message(self, name: &str, got: usize) -> String {
        let (qualifier, k) = match self {
            Arity::Exactly(k) => ("", k),
            Arity::AtLeast(k) => ("at least ", k),
        };
        let plural = if k == 1 { "" } else { "s" };
        format!("'{name}' expects {qualifier}{k} argument{plural}, got {got}")
    }
}

impl Builtin {
    pub const ALL: [Builtin; 36] = [
        Builtin::ToLowercase,
        Builtin::ToUppercase,
        Builtin::Trim,
        Builtin::Substring,
        Builtin::StartsWith,
        Builtin::EndsWith,
        Builtin::Contains,
        Builtin::Replace,
        Builtin::RegexMatch,
        Builtin::RegexExtract,
        Builtin::ToString,
        Builtin::Len,
        Builtin::Abs,
        Builtin::Floor,
        Builtin::Ceil,
        Builtin::Round,
        Builtin::Min,
        Builtin::Max,
        Builtin::Now,
        Builtin::DaysBetween,
        Builtin::HoursBetween,
        Builtin::MinutesBetween,
        Builtin::DaysSince,
        Builtin::YearOf,
        Builtin::MonthOf,
        Builtin::DayOf,
        Builtin::HourOf,
        Builtin::MinuteOf,
        Builtin::DayOfWeek,
        Builtin::DateTrunc,
        Builtin::ParseDatetime,
        Builtin::Split,
        Builtin::Join,
        Builtin::ToInt,
        Builtin::ToFloat,
        Builtin::Coalesce,
    ];

    /// The function of a name as written (`str::trim`, `len`); case-sensitive.
    pub fn lookup(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Builtin::ToLowercase => "str::to_lowercase",
            Builtin::ToUppercase => "str::to_uppercase",
            Builtin::Trim => "str::trim",
            Builtin::Substring => "str::substring",
            Builtin::StartsWith => "starts_with",
            Builtin::EndsWith => "ends_with",
            Builtin::Contains => "contains",
            Builtin::Replace => "replace",
            Builtin::RegexMatch => "regex_match",
            Builtin::RegexExtract => "regex_extract",
            Builtin::ToString => "to_string",
            Builtin::Len => "len",
            Builtin::Abs => "math::abs",
            Builtin::Floor => "floor",
            Builtin::Ceil => "ceil",
            Builtin::Round => "round",
            Builtin::Min => "min",
            Builtin::Max => "max",
            Builtin::Now => "now",
            Builtin::DaysBetween => "days_between",
            Builtin::HoursBetween => "hours_between",
            Builtin::MinutesBetween => "minutes_between",
            Builtin::DaysSince => "days_since",
            Builtin::YearOf => "year_of",
            Builtin::MonthOf => "month_of",
            Builtin::DayOf => "day_of",
            Builtin::HourOf => "hour_of",
            Builtin::MinuteOf => "minute_of",
            Builtin::DayOfWeek => "day_of_week",
            Builtin::DateTrunc => "date_trunc",
            Builtin::ParseDatetime => "parse_datetime",
            Builtin::Split => "split",
            Builtin::Join => "join",
            Builtin::ToInt => "to_int",
            Builtin::ToFloat => "to_float",
            Builtin::Coalesce => "coalesce",
        }
    }

    pub fn arity(self) -> Arity {
        use Builtin::*;
        match self {
            Now => Arity::Exactly(0),
            Coalesce => Arity::AtLeast(1),
            ToLowercase | ToUppercase | Trim | ToString | Len | Abs | Floor | Ceil | Round
            | DaysSince | YearOf | MonthOf | DayOf | HourOf | MinuteOf | DayOfWeek | ToInt
            | ToFloat => Arity::Exactly(1),
            Substring | Replace => Arity::Exactly(3),
            StartsWith | EndsWith | Contains | RegexMatch | RegexExtract | Min | Max
            | DaysBetween | HoursBetween | MinutesBetween | DateTrunc | ParseDatetime | Split
            | Join => Arity::Exactly(2),
        }
    }
}

/// Calls with up to this many arguments evaluate them into a stack buffer.
const INLINE_ARGS: usize = 4;

// Kept out of `eval_into` so that the hot recursion has a small stack frame.
#[inline(never)]
pub(crate) fn call<'a, S: Scope + ?Sized>(
    call: &'a Call,
    scope: &'a S,
    out: &mut Slot<'a>,
) -> Result<(), Fail> {
    let args = call.args();
    if args.len() <= INLINE_ARGS {
        let mut buffer: [Slot<'a>; INLINE_ARGS] = std::array::from_fn(|_| slot());
        for (value, arg) in buffer.iter_mut().zip(args) {
            eval_into(arg, scope, value)?;
        }
        apply(call, &mut buffer[..args.len()], scope, out)
    } else {
        let mut values: Vec<Slot<'a>> = Vec::with_capacity(args.len());
        for arg in args {
            let mut value = slot();
            eval_into(arg, scope, &mut value)?;
            values.push(value);
        }
        apply(call, &mut values, scope, out)
    }
}

fn apply<'a, S: Scope + ?Sized>(
    call: &'a Call,
    args: &mut [Slot<'a>],
    scope: &S,
    out: &mut Slot<'a>,
) -> Result<(), Fail> {
    let Some(f) = call.builtin() else {
        return Err(err(format!("Unknown function '{}'", call.name())));
    };
    if !f.arity().accepts(args.len()) {
        return Err(err(f.arity().error_message(f.name(), args.len())));
    }
    use Builtin::*;
    *out = match f {
        Coalesce => match args.iter_mut().find(|a| !a.is_null()) {
            Some(found) => std::mem::replace(found, slot()),
            None => slot(),
        },
        ToString => match std::mem::replace(&mut args[0], slot()) {
            s @ (Cow::Borrowed(Value::String(_)) | Cow::Owned(Value::String(_))) => s,
            v => Cow::Owned(Value::str(checked_text(&v)?)),
        },
        Contains => Cow::Owned(match (args[0].as_ref(), args[1].as_ref()) {
            (Value::String(s), Value::String(sub)) => Value::Bool(s.contains(&**sub)),
            (Value::Array(items), needle) => {
                Value::Bool(items.iter().any(|item| item.identical(needle)))
            }
            _ => return Err(kinds_error(f, "(String, String) or (Array, any)", args)),
        }),
        Len => Cow::Owned(match args[0].as_ref() {
            Value::String(s) => Value::Int(s.len() as i64),
            Value::Array(items) => Value::Int(items.len() as i64),
            _ => return Err(kinds_error(f, "String or Array", args)),
        }),
        Now => Cow::Owned(Value::DateTime(scope.now())),
        DaysSince => match args[0].as_ref() {
            Value::DateTime(t) => Cow::Owned(Value::Int(
                scope.now().signed_duration_since(*t).num_days().abs(),
            )),
            _ => return Err(kinds_error(f, "DateTime", args)),
        },
        _ => Cow::Owned(pure(f, call, args)?),
    };
    Ok(())
}

/// The functions whose result depends on their arguments only and is always a new value.
fn pure(f: Builtin, call: &Call, args: &[Cow<'_, Value>]) -> Result<Value, Fail> {
    use Builtin::*;
    let a = args[0].as_ref();
    let b = args.get(1).map(|b| b.as_ref());
    let c = args.get(2).map(|c| c.as_ref());
    match (f, a, b, c) {
        (ToLowercase, Value::String(s), ..) => string_result(s.to_lowercase()),
        (ToUppercase, Value::String(s), ..) => string_result(s.to_uppercase()),
        (Trim, Value::String(s), ..) => Ok(Value::str(s.trim())),
        (Substring, Value::String(s), Some(Value::Int(start)), Some(Value::Int(len))) => {
            // Negative numbers become huge unsigned ones (upstream behaviour, kept).
            let text: String = s
                .chars()
                .skip(*start as u64 as usize)
                .take(*len as u64 as usize)
                .collect();
            Ok(Value::str(text))
        }
        (StartsWith, Value::String(s), Some(Value::String(p)), _) => {
            Ok(Value::Bool(s.starts_with(&**p)))
        }
        (EndsWith, Value::String(s), Some(Value::String(p)), _) => {
            Ok(Value::Bool(s.ends_with(&**p)))
        }
        (Replace, Value::String(s), Some(Value::String(from)), Some(Value::String(to))) => {
            replace(s, from, to)
        }
        (RegexMatch, Value::String(s), Some(Value::String(p)), _) => {
            with_regex(call, p, |re| Value::Bool(re.is_match(s)))
        }
        (RegexExtract, Value::String(s), Some(Value::String(p)), _) => with_regex(call, p, |re| {
            re.captures(s).map_or(Value::Null, |caps| {
                let m = caps.get(1).or_else(|| caps.get(0));
                m.map_or(Value::Null, |m| Value::str(m.as_str()))
            })
        }),
        (Abs, Value::Int(i), ..) => i
            .checked_abs()
            .map(Value::Int)
            .ok_or_else(|| err("Integer overflow in 'math::abs'")),
        (Abs, Value::Float(x), ..) => Ok(Value::Float(x.abs())),
        (Floor | Ceil | Round, Value::Int(i), ..) => Ok(Value::Int(*i)),
        // `as` saturates at the Int range and maps NaN to 0 (EXPRESSIONS.md §6.2).
        (Floor, Value::Float(x), ..) => Ok(Value::Int(x.floor() as i64)),
        (Ceil, Value::Float(x), ..) => Ok(Value::Int(x.ceil() as i64)),
        // `f64::round` rounds ties away from zero.
        (Round, Value::Float(x), ..) => Ok(Value::Int(x.round() as i64)),
        (Min | Max, _, Some(b), _) => {
            min_max(f, a, b).ok_or_else(|| kinds_error(f, "(number, number)", args))
        }
        (
            DaysBetween | HoursBetween | MinutesBetween,
            Value::DateTime(x),
            Some(Value::DateTime(y)),
            _,
        ) => {
            let delta = y.signed_duration_since(*x);
            Ok(Value::Int(
                match f {
                    DaysBetween => delta.num_days(),
                    HoursBetween => delta.num_hours(),
                    _ => delta.num_minutes(),
                }
                .abs(),
            ))
        }
        (YearOf, Value::DateTime(t), ..) => Ok(Value::Int(i64::from(t.year()))),
        (MonthOf, Value::DateTime(t), ..) => Ok(Value::Int(i64::from(t.month()))),
        (DayOf, Value::DateTime(t), ..) => Ok(Value::Int(i64::from(t.day()))),
        (HourOf, Value::DateTime(t), ..) => Ok(Value::Int(i64::from(t.hour()))),
        (MinuteOf, Value::DateTime(t), ..) => Ok(Value::Int(i64::from(t.minute()))),
        (DayOfWeek, Value::DateTime(t), ..) => {
            Ok(Value::Int(i64::from(t.weekday().num_days_from_monday())))
        }
        (DateTrunc, Value::DateTime(t), Some(Value::String(unit)), _) => date_trunc(t, unit),
        (ParseDatetime, Value::String(s), Some(Value::String(format)), _) => {
            parse_datetime(s, format)
        }
        (Split, Value::String(s), Some(Value::String(d)), _) => {
            Ok(Value::array(s.split(&**d).map(Value::str).collect()))
        }
        (Join, Value::Array(items), Some(Value::String(d)), _) => join(items, d),
        (ToInt, Value::Int(i), ..) => Ok(Value::Int(*i)),
        (ToInt, Value::Float(x), ..) => Ok(Value::Int(*x as i64)),
        (ToInt, Value::Bool(b), ..) => Ok(Value::Int(i64::from(*b))),
        (ToInt, Value::String(s), ..) => s
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| err(format!("'to_int' cannot parse '{s}' as an integer"))),
        (ToFloat, Value::Float(x), ..) => Ok(Value::Float(*x)),
        (ToFloat, Value::Int(i), ..) => Ok(Value::Float(*i as f64)),
        (ToFloat, Value::String(s), ..) => s
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| err(format!("'to_float' cannot parse '{s}' as a float"))),
        _ => Err(kinds_error(f, expected_kinds(f), args)),
    }
}

/// The argument kinds named in a type error.
fn expected_kinds(f: Builtin) -> &'static str {
    use Builtin::*;
    match f {
        ToLowercase | ToUppercase | Trim => "String",
        Substring => "(String, Int, Int)",
        StartsWith | EndsWith | RegexMatch | RegexExtract | Split | ParseDatetime => {
            "(String, String)"
        }
        Replace => "(String, String, String)",
        Abs | Floor | Ceil | Round => "Int or Float",
        DaysBetween | HoursBetween | MinutesBetween => "(DateTime, DateTime)",
        YearOf | MonthOf | DayOf | HourOf | MinuteOf | DayOfWeek | DaysSince => "DateTime",
        DateTrunc => "(DateTime, String)",
        Join => "(Array, String)",
        ToInt => "Int, Float, Bool or String",
        ToFloat => "Float, Int or String",
        _ => "other arguments",
    }
}

fn kinds_error(f: Builtin, expected: &str, args: &[Cow<'_, Value>]) -> Fail {
    let kinds: Vec<String> = args.iter().map(|a| a.kind().to_string()).collect();
    let got = if kinds.len() == 1 {
        kinds[0].clone()
    } else {
        format!("({})", kinds.join(", "))
    };
    err(format!("'{}' expects {expected}, got {got}", f.name()))
}

fn string_result(s: String) -> Result<Value, Fail> {
    check_string_len(s.len())?;
    Ok(Value::str(s))
}

/// `to_string` text, refusing results beyond the string size limit.
fn checked_text(v: &Value) -> Result<String, Fail> {
    if let Value::Array(items) = v {
        // A rough lower bound (one byte per element) rejects absurd arrays before rendering.
        check_string_len(items.len())?;
    }
    let text = v.to_text();
    check_string_len(text.len())?;
    Ok(text)
}

/// `replace`, with the result size computed before building it.
fn replace(s: &str, from: &str, to: &str) -> Result<Value, Fail> {
    let count = if from.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from).count()
    };
    let len = count
        .checked_mul(to.len())
        .and_then(|added| (s.len() - count * from.len()).checked_add(added))
        .unwrap_or(usize::MAX);
    check_string_len(len)?;
    Ok(Value::str(s.replace(from, to)))
}

fn min_max(f: Builtin, a: &Value, b: &Value) -> Option<Value> {
    let pick_max = f == Builtin::Max;
    let float = |x: f64, y: f64| Value::Float(if pick_max { x.max(y) } else { x.min(y) });
    Some(match (a, b) {
        (Value::Int(x), Value::Int(y)) => Value::Int(if pick_max { *x.max(y) } else { *x.min(y) }),
        (Value::Float(x), Value::Float(y)) => float(*x, *y),
        (Value::Int(x), Value::Float(y)) => float(*x as f64, *y),
        (Value::Float(x), Value::Int(y)) => float(*x, *y as f64),
        _ => return None,
    })
}

fn date_trunc(t: &Instant, unit: &str) -> Result<Value, Fail> {
    let (y, mo, d, h, mi) = (t.year(), t.month(), t.day(), t.hour(), t.minute());
    let (mo, d, h, mi) = match unit {
        "year" => (1, 1, 0, 0),
        "month" => (mo, 1, 0, 0),
        "day" => (mo, d, 0, 0),
        "hour" => (mo, d, h, 0),
        "minute" => (mo, d, h, mi),
        other => {
            return Err(err(format!(
            "'date_trunc' unit must be 'year', 'month', 'day', 'hour' or 'minute', got '{other}'"
        )))
        }
    };
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .map(Value::DateTime)
        .ok_or_else(|| err("'date_trunc' result out of range"))
}

/// strftime parsing; both a date and a time are required and a parsed `%z` offset is
/// ignored (the wall-clock fields are taken as UTC).
fn parse_datetime(s: &str, format: &str) -> Result<Value, Fail> {
    NaiveDateTime::parse_from_str(s, format)
        .map(|naive| Value::DateTime(Utc.from_utc_datetime(&naive)))
        .map_err(|e| {
            err(format!(
                "'parse_datetime' failed to parse '{s}' with format '{format}': {e}"
            ))
        })
}

/// `join`: like `to_string` per element, except that Null is written `null`.
fn join(items: &[Value], delimiter: &str) -> Result<Value, Fail> {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(delimiter);
        }
        match item {
            Value::Null => out.push_str("null"),
            Value::String(s) => out.push_str(s),
            Value::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Float(x) => out.push_str(&float_text(*x)),
            other => out.push_str(&checked_text(other)?),
        }
        check_string_len(out.len())?;
    }
    Ok(Value::str(out))
}

thread_local! {
    /// Compiled patterns that were not literals, by pattern text. Cleared when full.
    static REGEX_CACHE: RefCell<HashMap<String, Result<Regex, String>>> =
        RefCell::new(HashMap::new());
}

const REGEX_CACHE_CAPACITY: usize = 64;

/// Runs `f` with the compiled `pattern`: the call's precompiled literal when there is one,
/// else a per-thread cache entry.
fn with_regex(call: &Call, pattern: &str, f: impl FnOnce(&Regex) -> Value) -> Result<Value, Fail> {
    let invalid = |e: &str| err(format!("Invalid regex '{pattern}': {e}"));
    if let Some(compiled) = call.literal_pattern() {
        return compiled.as_ref().map(f).map_err(|e| invalid(e));
    }
    REGEX_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(pattern) {
            if cache.len() >= REGEX_CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(pattern.to_string(), compile_regex(pattern));
        }
        match &cache[pattern] {
            Ok(re) => Ok(f(re)),
            Err(e) => Err(invalid(e)),
        }
    })
}
