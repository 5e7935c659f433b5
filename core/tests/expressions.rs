//! The expression language (EXPRESSIONS.md): CONTRACTS group B through the EXPR harness, then
//! the remaining rules operator by operator and function by function, then properties
//! (printing round-trips, hostile input never panics).
//!
//! `expr(x)` is the harness's EXPR(x): `x` evaluated with the event map made of the top-level
//! fields of the raw event R0 (CONTRACTS.md, "Expression harness"), converted per §1.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use defacto_core::expr::*;
use defacto_core::Value;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

const R0: &str = r#"{"type":"x","ts":"2024-01-01T00:00:00Z","k":"1","a":5,"f":2.5,"s":"héllo","n":null,"arr":[1,"two",3.0],"t":true,"obj":{"x":1},"dt":"2024-03-15T13:45:30Z"}"#;

/// The fixed `as_of` of the harness job (`now()`).
const AS_OF: &str = "2024-06-01T00:00:00Z";

fn instant(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("test timestamp")
        .with_timezone(&Utc)
}

fn event_map(raw: &str) -> HashMap<String, Value> {
    let json: serde_json::Value = serde_json::from_str(raw).expect("test JSON");
    json.as_object()
        .expect("object")
        .iter()
        .map(|(k, v)| (k.clone(), Value::from_json(v)))
        .collect()
}

fn harness() -> MapScope {
    let mut scope = MapScope::new(instant(AS_OF));
    scope.event = event_map(R0);
    scope
}

fn eval_in(scope: &MapScope, text: &str) -> Result<Value, EvalError> {
    Expr::parse(text)
        .unwrap_or_else(|e| panic!("`{text}` should parse: {e}"))
        .eval(scope)
}

/// EXPR(x)
fn expr(text: &str) -> Value {
    eval_in(&harness(), text).unwrap_or_else(|e| panic!("`{text}` failed: {e}"))
}

/// ERR(fragment)
fn expr_err(text: &str, fragment: &str) {
    match eval_in(&harness(), text) {
        Err(e) => assert!(
            e.message.contains(fragment),
            "`{text}`: error `{}` lacks `{fragment}`",
            e.message
        ),
        Ok(v) => panic!("`{text}`: expected an error containing `{fragment}`, got {v:?}"),
    }
}

/// ERR with any message.
fn expr_fails(text: &str) {
    if let Ok(v) = eval_in(&harness(), text) {
        panic!("`{text}`: expected an evaluation error, got {v:?}");
    }
}

/// PARSE
fn parse_fails(text: &str) {
    if let Ok(x) = Expr::parse(text) {
        panic!("`{text}` should not parse, got {:?}", x.ast());
    }
}

fn int(i: i64) -> Value {
    Value::Int(i)
}
fn float(f: f64) -> Value {
    Value::Float(f)
}
fn s(text: &str) -> Value {
    Value::str(text)
}
fn boolean(b: bool) -> Value {
    Value::Bool(b)
}
fn secs(n: u64) -> Value {
    Value::Duration(Duration::from_secs(n))
}
fn ts(text: &str) -> Value {
    Value::DateTime(instant(text))
}

/// `<MM-DD hh:mm>` of CONTRACTS B13.
fn at(month_day_time: &str) -> String {
    format!("parse_datetime('2024-{month_day_time}:00', '%Y-%m-%d %H:%M:%S')")
}

/// A DateTime written as `YYYY-MM-DD hh:mm:ss` in an expression.
fn pdt(text: &str) -> String {
    format!("parse_datetime('{text}', '%Y-%m-%d %H:%M:%S')")
}

// ---------------------------------------------------------------------------------------------
// CONTRACTS group B
// ---------------------------------------------------------------------------------------------

// CONTRACTS B1
#[test]
fn b1_precedence() {
    assert_eq!(expr("1 + 2 * 3"), int(7));
    assert_eq!(expr("2 ** 3 ** 2"), int(512));
    assert_eq!(expr("-2 ** 2"), int(4));
    assert_eq!(expr("1 < 2 == true"), boolean(true));
    assert_eq!(expr("not true == false"), boolean(true));
    expr_err("not 1 == 1", "'not' requires Bool");
    assert_eq!(expr(r#"if event.a > 3 then "hi" else "lo" + "!""#), s("hi"));
    assert_eq!(expr("event.a>3&&event.a<10"), boolean(true));
}

// CONTRACTS B2
#[test]
fn b2_no_short_circuit() {
    expr_err("false and event.n > 1", "Cannot compare Null with Int");
    expr_err("true or event.n > 1", "Cannot compare Null with Int");
    expr_err("event.n and true", "'and' requires Bool");
    assert_eq!(expr("coalesce(event.n, 0) > 1"), boolean(false));
}

// CONTRACTS B3
#[test]
fn b3_arithmetic() {
    assert_eq!(expr("7 / 2"), int(3));
    assert_eq!(expr("-7 / 2"), int(-3));
    assert_eq!(expr("7 / 2.0"), float(3.5));
    expr_err("7 / 0", "Division by zero");
    expr_err("7.0 / 0", "Division by zero");
    expr_err("2 ** -1", "negative power");
    assert_eq!(expr("2.0 ** -1"), float(0.5));
    assert_eq!(expr(r#""a" + "b""#), s("ab"));
    expr_err(r#""a" + 1"#, "Cannot apply '+' to String and Int");
}

// CONTRACTS B4
#[test]
fn b4_overflow_is_an_error_not_a_crash() {
    expr_fails("9223372036854775807 + 1");
    expr_fails("event.a * 9223372036854775807");
    parse_fails("99999999999999999999");
}

// CONTRACTS B5
#[test]
fn b5_equality_and_ordering() {
    assert_eq!(expr("1 == 1.0"), boolean(true));
    assert_eq!(expr(r#""a" == 1"#), boolean(false));
    assert_eq!(expr("null == null"), boolean(true));
    assert_eq!(expr("event.missing == null"), boolean(true));
    assert_eq!(expr("event.arr == event.arr"), boolean(false));
    assert_eq!(expr(r#""B" < "a""#), boolean(true));
    expr_err("event.n > 1", "Cannot compare Null with Int");
    expr_err("true < false", "Cannot compare Bool with Bool");
}

// CONTRACTS B6
#[test]
fn b6_paths_and_indexing() {
    assert_eq!(expr("event.obj.x"), Value::Null);
    assert_eq!(expr("event.obj"), Value::Null);
    assert_eq!(expr("foo"), Value::Null);
    expr_err("foo.bar", "Unknown context 'foo'");
    parse_fails("event.items.0");
    assert_eq!(expr("event.arr[0]"), int(1));
    assert_eq!(expr("event.arr[-1]"), float(3.0));
    assert_eq!(expr("event.arr[5]"), Value::Null);
    expr_err("event.arr[1.0]", "Index must be Int");
    assert_eq!(expr("event.s[1]"), s("é"));
    expr_err("event.n[0]", "Cannot index into Null");
    assert_eq!(expr(r#"split("a@b.c", "@")[1]"#), s("b.c"));
}

// CONTRACTS B7
#[test]
fn b7_literals() {
    let thirty_days = expr("30d");
    assert_eq!(thirty_days, secs(2_592_000));
    assert_eq!(thirty_days.to_json(), serde_json::json!(2592000.0));
    for bad in ["1.5d", "30D", "1e3", ".5", "5."] {
        parse_fails(bad);
    }
    assert_eq!(expr("007"), int(7));
    assert_eq!(expr(r#"'single' + "double""#), s("singledouble"));
    assert_eq!(expr(r#""esc\"q\n""#), s("esc\"q\n"));
    parse_fails(r#""bad\x""#);
    for identifier in ["trueish", "nothing", "null_thing"] {
        assert_eq!(expr(identifier), Value::Null, "{identifier}");
    }
    assert_eq!(expr("event.if"), Value::Null);
}

// CONTRACTS B8
#[test]
fn b8_string_functions() {
    assert_eq!(expr(r#"str::substring("hello", 1, 3)"#), s("ell"));
    assert_eq!(expr(r#"str::substring("hello", -1, 2)"#), s(""));
    assert_eq!(expr(r#"str::substring("hello", 1, -1)"#), s("ello"));
    assert_eq!(expr(r#"str::substring("héllo", 1, 2)"#), s("él"));
    assert_eq!(expr(r#"len("héllo")"#), int(6));
    assert_eq!(expr("len(event.arr)"), int(3));
    expr_fails("len(null)");
    assert_eq!(expr(r#"replace("abc", "", "-")"#), s("-a-b-c-"));
    assert_eq!(
        expr(r#"split("abc", "")"#),
        Value::array(vec![s(""), s("a"), s("b"), s("c"), s("")])
    );
    assert_eq!(expr(r#"split("", ",")"#), Value::array(vec![s("")]));
    assert_eq!(expr("contains(event.arr, 1)"), boolean(true));
    assert_eq!(expr("contains(event.arr, 1.0)"), boolean(false));
    assert_eq!(expr(r#"contains("abc", "")"#), boolean(true));
    assert_eq!(expr(r#"str::to_uppercase("straße")"#), s("STRASSE"));
    expr_fails("str::trim(5)");
}

// CONTRACTS B9
#[test]
fn b9_regex() {
    assert_eq!(expr(r#"regex_match("abc", "b")"#), boolean(true));
    assert_eq!(expr(r#"regex_match("abc", "^b")"#), boolean(false));
    expr_err(r#"regex_match("abc", "(")"#, "Invalid regex");
    assert_eq!(expr(r#"regex_extract("ORD-123", "ORD-(\\d+)")"#), s("123"));
    assert_eq!(expr(r#"regex_extract("abc123", "\\d+")"#), s("123"));
    assert_eq!(expr(r#"regex_extract("abc", "(x)?abc")"#), s("abc"));
    assert_eq!(expr(r#"regex_extract("abc", "z")"#), Value::Null);
}

// CONTRACTS B10
#[test]
fn b10_math() {
    assert_eq!(expr("round(2.5)"), int(3));
    assert_eq!(expr("round(-2.5)"), int(-3));
    assert_eq!(expr("round(0.5)"), int(1));
    assert_eq!(expr("round(5)"), int(5));
    assert_eq!(expr("floor(-1.5)"), int(-2));
    assert_eq!(expr("ceil(-1.5)"), int(-1));
    assert_eq!(expr("math::abs(-3.5)"), float(3.5));
    assert_eq!(expr("min(1, 2.0)"), float(1.0));
    assert_eq!(expr("max(3, 2)"), int(3));
    expr_fails(r#"min("a", "b")"#);
}

// CONTRACTS B11
#[test]
fn b11_rendering() {
    assert_eq!(expr("to_string(1.0)"), s("1"));
    assert_eq!(expr("to_string(0.1 + 0.2)"), s("0.30000000000000004"));
    assert_eq!(expr("to_string(null)"), s(""));
    assert_eq!(expr("to_string(true)"), s("true"));
    assert_eq!(expr(r#"join(event.arr, "-")"#), s("1-two-3"));
    let mut extended = harness();
    extended
        .event
        .insert("arr2".into(), Value::array(vec![int(1), Value::Null]));
    assert_eq!(
        eval_in(&extended, r#"join(event.arr2, "|")"#).unwrap(),
        s("1|null")
    );
    // [P] the PROPOSED renderings
    assert_eq!(expr("to_string(event.arr)"), s(r#"[1,"two",3.0]"#));
    assert_eq!(expr("to_string(30d)"), s("2592000"));
}

// CONTRACTS B12
#[test]
fn b12_casts_and_coalesce() {
    assert_eq!(expr(r#"to_int("42")"#), int(42));
    expr_fails(r#"to_int(" 42")"#);
    expr_fails(r#"to_int("4.2")"#);
    expr_fails("to_int(null)");
    assert_eq!(expr("to_int(-4.9)"), int(-4));
    assert_eq!(expr("to_int(true)"), int(1));
    assert_eq!(expr(r#"to_float("1e3")"#), float(1000.0));
    expr_fails("to_float(true)");
    assert_eq!(expr("coalesce(null, event.missing, 3)"), int(3));
    assert_eq!(expr("coalesce(null)"), Value::Null);
    expr_fails("coalesce()");
    expr_err("coalesce(1, 1/0)", "Division by zero");
}

// CONTRACTS B13
#[test]
fn b13_date_time() {
    assert_eq!(
        expr(r#"parse_datetime("2024-01-15 10:30:00", "%Y-%m-%d %H:%M:%S")"#),
        ts("2024-01-15T10:30:00+00:00")
    );
    expr_fails(r#"parse_datetime("2024-01-15", "%Y-%m-%d")"#);
    assert_eq!(
        expr(r#"parse_datetime("2024-01-15T10:30:00+05:00", "%Y-%m-%dT%H:%M:%S%z")"#),
        ts("2024-01-15T10:30:00+00:00")
    );
    assert_eq!(
        expr(r#"day_of_week(parse_datetime("2024-01-15 10:30:00", "%Y-%m-%d %H:%M:%S"))"#),
        int(0)
    );
    let march = r#"parse_datetime("2024-03-15 10:30:45", "%Y-%m-%d %H:%M:%S")"#;
    assert_eq!(
        expr(&format!(r#"date_trunc({march}, "month")"#)),
        ts("2024-03-01T00:00:00+00:00")
    );
    expr_fails(&format!(r#"date_trunc({march}, "week")"#));
    expr_fails(&format!(r#"date_trunc({march}, "Month")"#));
    let (jan1, jan1_1am, jan1_259) = (at("01-01 00:00"), at("01-01 01:00"), at("01-01 02:59"));
    let (jan2, jan2_23, jan3) = (at("01-02 00:00"), at("01-02 23:00"), at("01-03 00:00"));
    assert_eq!(expr(&format!("days_between({jan1}, {jan2_23})")), int(1));
    assert_eq!(expr(&format!("days_between({jan3}, {jan1_1am})")), int(1));
    assert_eq!(expr(&format!("hours_between({jan1}, {jan1_259})")), int(2));
    let day = expr(&format!("{jan2} - {jan1}"));
    assert_eq!(day, secs(86_400));
    assert_eq!(day.to_json(), serde_json::json!(86400.0));
    expr_err(&format!("{jan1} - {jan2}"), "Negative duration");
    assert_eq!(
        expr(&format!("{jan1} + 1d")),
        ts("2024-01-02T00:00:00+00:00")
    );
    expr_fails("year_of(event.dt)");
}

// CONTRACTS B14
#[test]
fn b14_durations() {
    assert_eq!(expr("1d * 2"), secs(172_800));
    assert_eq!(expr("1d * 2").to_json(), serde_json::json!(172800.0));
    assert_eq!(expr("2 * 1d"), secs(172_800));
    expr_fails("1d - 2d");
    expr_fails("1d * 2.0");
    expr_fails("1d / 2");
    expr_fails("1d * -1");
}

// CONTRACTS B15 (the expression side: `now()` is the scope's fixed as_of, never the clock)
#[test]
fn b15_days_since_uses_the_fixed_as_of() {
    let x = "days_since(parse_datetime('2024-05-01 00:00:00', '%Y-%m-%d %H:%M:%S'))";
    for _ in 0..3 {
        assert_eq!(expr(x), int(31));
    }
    assert_eq!(expr("now()"), ts(AS_OF));
}

// ---------------------------------------------------------------------------------------------
// Lexical structure (§2)
// ---------------------------------------------------------------------------------------------

#[test]
fn whitespace_separates_tokens_but_never_splits_one() {
    assert_eq!(expr("\n 1 +\t2 \r\n"), int(3));
    assert_eq!(expr("\u{3000}1\u{a0}+\u{2003}2"), int(3));
    assert_eq!(expr(r#"str::trim ("a ")"#), s("a"));
    assert_eq!(expr(r#"len ( "ab" , )"#), int(2));
    parse_fails("event . a");
    parse_fails("event. a");
    parse_fails(r#"str :: trim("a")"#);
    parse_fails(r#"str:: trim("a")"#);
    parse_fails("30 d");
    parse_fails("1 . 5");
    parse_fails("2 * * 3");
    parse_fails("1 > = 2");
}

#[test]
fn keywords_need_a_boundary_and_are_case_sensitive() {
    for identifier in [
        "android",
        "nothing",
        "null_count",
        "trueish",
        "iffy",
        "orange",
        "True",
        "NULL",
        "_if",
    ] {
        assert_eq!(expr(identifier), Value::Null, "{identifier}");
    }
    assert_eq!(expr("event.a>3and true"), boolean(true));
    assert_eq!(expr("event.a<3or true"), boolean(true));
    assert_eq!(expr("not(true)"), boolean(false));
    assert_eq!(expr("if(true)then(1)else(2)"), int(1));
    // keywords may be later path segments but not the first one or a function name
    for path in ["event.null", "event.and", "entity.if", "event.true"] {
        assert_eq!(expr(path), Value::Null, "{path}");
    }
    parse_fails("if.x");
    parse_fails("null.x");
    parse_fails("and");
    parse_fails("then(1)");
    parse_fails("str::if(1)");
    parse_fails("not::x(1)");
}

#[test]
fn integer_literals() {
    assert_eq!(expr("0"), int(0));
    assert_eq!(expr("9223372036854775807"), int(i64::MAX));
    parse_fails("9223372036854775808");
    // the minimum is reachable only through arithmetic, the literal itself overflows
    parse_fails("-9223372036854775808");
    assert_eq!(expr("-9223372036854775807 - 1"), int(i64::MIN));
    parse_fails("+1");
    parse_fails("1_000");
}

#[test]
fn float_literals() {
    assert_eq!(expr("1.5"), float(1.5));
    assert_eq!(expr("00.50"), float(0.5));
    assert_eq!(expr("0.0"), float(0.0));
    assert_eq!(
        expr("100000000000000000000.0"),
        float(100_000_000_000_000_000_000.0)
    );
    for bad in ["1.", "1.e3", "1.5e3", "1E3", "5.x", "1.5.3", ".5e1"] {
        parse_fails(bad);
    }
}

#[test]
fn duration_literals() {
    assert_eq!(expr("30d"), secs(30 * 86_400));
    assert_eq!(expr("24h"), secs(86_400));
    assert_eq!(expr("90m"), secs(5_400));
    assert_eq!(expr("45s"), secs(45));
    assert_eq!(expr("0s"), secs(0));
    assert_eq!(expr("213503982334601d"), secs(213_503_982_334_601 * 86_400));
    for bad in [
        "213503982334602d",
        "18446744073709551616s",
        "2w",
        "30days",
        "10min",
        "1.5h",
        "1dh",
    ] {
        parse_fails(bad);
    }
}

#[test]
fn string_literals() {
    assert_eq!(expr(r"'it\'s'"), s("it's"));
    assert_eq!(expr(r#""say \"hi\"""#), s("say \"hi\""));
    assert_eq!(expr(r#"'dq " inside sq'"#), s("dq \" inside sq"));
    assert_eq!(expr(r#""a\\b""#), s("a\\b"));
    assert_eq!(expr(r#""t\tr\rn\n""#), s("t\tr\rn\n"));
    assert_eq!(expr("\"line1\nline2\""), s("line1\nline2"));
    assert_eq!(expr("''"), s(""));
    for bad in [
        r#""\u0041""#,
        r#""a\"#,
        r#""unterminated"#,
        r#"'mixed""#,
        r#""a" 'b'"#,
        r#""\0""#,
    ] {
        parse_fails(bad);
    }
}

#[test]
fn other_tokens_are_rejected() {
    for bad in [
        "1 = 1",
        "1 === 1",
        "1 & 1",
        "1 | 1",
        "5 % 2",
        "[1, 2]",
        "a ? b : c",
        "1 in x",
        "{}",
        "a;b",
        "#",
    ] {
        parse_fails(bad);
    }
}

// ---------------------------------------------------------------------------------------------
// Grammar (§3)
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_expressions_do_not_parse() {
    for bad in [
        "",
        "   ",
        "1 +",
        "(1",
        "1)",
        "()",
        "if true then 1",
        "if true 1 else 2",
        "not",
        "-",
        "f(1",
        "f(,)",
        "f(1,,2)",
        "a[",
        "a[]",
        "a b",
        "1 2",
    ] {
        parse_fails(bad);
    }
}

#[test]
fn prefix_operators_bind_tighter_than_binary_ones() {
    assert_eq!(expr("-2 ** 2"), int(4));
    assert_eq!(expr("2 ** -1.0"), float(0.5));
    assert_eq!(expr("- 3 - 2"), int(-5));
    assert_eq!(expr("1 - -1"), int(2));
    assert_eq!(expr("1--1"), int(2));
    assert_eq!(expr("--3"), int(3));
    assert_eq!(expr("-event.arr[0]"), int(-1));
    assert_eq!(expr("!true == false"), boolean(true));
    assert_eq!(expr("not not false"), boolean(false));
    assert_eq!(expr("!!true"), boolean(true));
}

#[test]
fn binary_precedence_and_associativity() {
    assert_eq!(expr("10 - 4 - 3"), int(3));
    assert_eq!(expr("64 / 4 / 2"), int(8));
    assert_eq!(expr("2 * 3 + 4 * 5"), int(26));
    assert_eq!(expr("(1 + 2) * 3"), int(9));
    assert_eq!(expr("2 ** 2 * 3"), int(12));
    assert_eq!(expr("1 + 1 == 2 and 2 > 1"), boolean(true));
    assert_eq!(expr("true or false and false"), boolean(true));
    assert_eq!(expr("(true or false) and false"), boolean(false));
    assert_eq!(expr("true || false && false"), boolean(true));
    assert_eq!(expr("1 == 1 == true"), boolean(true));
    expr_err("1 < 2 < 3", "Cannot compare Bool with Int");
}

#[test]
fn else_extends_as_far_right_as_possible() {
    assert_eq!(expr("if true then 1 else 2 + 3"), int(1));
    assert_eq!(expr("if false then 1 else 2 + 3"), int(5));
    assert_eq!(expr("(if false then 1 else 2) + 3"), int(5));
    assert_eq!(expr("1 + if false then 1 else 2 + 3"), int(6));
    assert_eq!(expr("if false then 1 else if false then 2 else 3"), int(3));
    assert_eq!(
        expr("if if true then false else true then 1 else 2"),
        int(2)
    );
}

#[test]
fn calls_allow_trailing_commas_and_namespaces() {
    assert_eq!(expr("coalesce(1, 2,)"), int(1));
    assert_eq!(expr("now( )"), ts(AS_OF));
    parse_fails("a::b::c(1)");
    parse_fails("str::trim");
    parse_fails("event.x(1)");
    parse_fails("f (1) (2)");
}

#[test]
fn index_chains_bind_to_the_atom() {
    let mut scope = harness();
    let nested = Value::array(vec![Value::array(vec![int(1), int(2)]), s("xy")]);
    scope.event.insert("nested".into(), nested);
    assert_eq!(eval_in(&scope, "event.nested[0][1]").unwrap(), int(2));
    assert_eq!(eval_in(&scope, "event.nested[1][-1]").unwrap(), s("y"));
    assert_eq!(eval_in(&scope, "event.nested[0 + 1][0]").unwrap(), s("x"));
    assert_eq!(eval_in(&scope, "(event.nested)[0][0]").unwrap(), int(1));
}

#[test]
fn parse_errors_report_a_character_position() {
    let e = Expr::parse("1 + ").unwrap_err();
    assert_eq!(e.position, 4);
    assert_eq!(e.text, "1 + ");
    assert!(e.message.contains("end of expression"), "{}", e.message);
    assert!(e.to_string().contains("at position 4 in expression '1 + '"));

    // characters, not bytes: `é` is two bytes
    let e = Expr::parse("'é' + )").unwrap_err();
    assert_eq!(e.position, 6);

    let e = Expr::parse("1 + 99999999999999999999").unwrap_err();
    assert_eq!(e.position, 4);
    assert!(e.message.contains("out of range"));

    let e = Expr::parse(r#""ok" + "bad\q""#).unwrap_err();
    assert_eq!(e.position, 11);
    assert!(e.message.contains("escape"));
}

#[test]
fn deep_trees_are_a_parse_error_not_a_stack_overflow() {
    let n = 100_000;
    let too_deep = [
        format!("{}1", "-".repeat(n)),
        format!("{}true", "not ".repeat(n)),
        format!("1{}", " + 1".repeat(n)),
        format!("2{}", " ** 2".repeat(n)),
        format!("x{}", "[0]".repeat(n)),
        format!("{}1{}", "f(".repeat(n), ")".repeat(n)),
        format!("{}1{}", "1 + (".repeat(n), ")".repeat(n)),
        format!("{}1{}", "-(".repeat(n), ")".repeat(n)),
        format!("{}1{}", "x[".repeat(n), "]".repeat(n)),
        format!("{}1", "if true then 1 else ".repeat(n)),
        format!(
            "1{}{}",
            " or 1 and 1 == 1 + 1 * (1".repeat(n),
            ")".repeat(n)
        ),
    ];
    for text in &too_deep {
        let e = Expr::parse(text).expect_err("too deep");
        assert!(e.message.contains("nested too deeply"), "{}", e.message);
    }
    let unclosed = [
        format!("{}1", "(".repeat(n)),
        format!("{}1", "[".repeat(n)),
        "if true then ".repeat(n),
        format!("{}1", "1 + (".repeat(n)),
        format!("{}1", "f(".repeat(n)),
    ];
    for text in &unclosed {
        assert!(Expr::parse(text).is_err());
    }
    // parentheses alone add no depth to the tree
    let parens = format!("{}1{}", "(".repeat(n), ")".repeat(n));
    assert_eq!(expr(&parens), int(1));
}

#[test]
fn nesting_up_to_the_limit_parses_evaluates_and_prints_back() {
    let depth = MAX_DEPTH as usize - 1;
    let cases = [
        format!("{}1{}", "(".repeat(depth), ")".repeat(depth)),
        format!("{}1", "-".repeat(depth)),
        format!("1{}", " + 1".repeat(depth)),
        format!(
            "1{}{}",
            " or 1 and 1 == 1 + 1 * (1".repeat(40),
            ")".repeat(40)
        ),
        format!("{}1{}", "math::abs(".repeat(depth), ")".repeat(depth)),
    ];
    for text in &cases {
        let x = Expr::parse(text).unwrap_or_else(|e| panic!("{e}"));
        let _ = x.eval(&harness());
        let printed = x.ast().to_string();
        let again = Expr::parse(&printed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.ast(), x.ast());
    }
    assert_eq!(expr(&format!("{}1", "-".repeat(depth))), int(-1));
    assert_eq!(expr(&format!("1{}", " + 1".repeat(depth))), int(256));
}

// ---------------------------------------------------------------------------------------------
// Name resolution (§4)
// ---------------------------------------------------------------------------------------------

#[test]
fn paths_resolve_against_event_entity_and_variables() {
    let mut scope = harness();
    scope.entity.insert("plan".into(), s("pro"));
    scope.vars.insert("value".into(), s("Alice@X.com"));
    scope.vars.insert("event".into(), int(7));
    assert_eq!(eval_in(&scope, "entity.plan").unwrap(), s("pro"));
    assert_eq!(eval_in(&scope, "entity.missing").unwrap(), Value::Null);
    assert_eq!(
        eval_in(&scope, "str::to_lowercase(value)").unwrap(),
        s("alice@x.com")
    );
    assert_eq!(eval_in(&scope, "event").unwrap(), int(7));
    assert_eq!(eval_in(&scope, "entity").unwrap(), Value::Null);
    assert_eq!(eval_in(&scope, "event.t").unwrap(), boolean(true));
    // three segments always give Null, even below an existing array
    assert_eq!(eval_in(&scope, "event.arr.x").unwrap(), Value::Null);
    assert_eq!(eval_in(&scope, "entity.plan.x.y").unwrap(), Value::Null);
    expr_err("other.x.y", "Unknown context 'other'");
    expr_err("value.x", "Unknown context 'value'");
}

#[test]
fn system_attributes_are_not_in_scope() {
    // only mapped/raw fields exist: `ts` is a field of R0, `timestamp` is not
    assert_eq!(expr("event.timestamp"), Value::Null);
    assert_eq!(expr("entity.state"), Value::Null);
    assert_eq!(expr("event.ts"), s("2024-01-01T00:00:00Z"));
}

#[test]
fn scope_defaults_see_nothing() {
    struct Clock;
    impl Scope for Clock {
        fn now(&self) -> defacto_core::Instant {
            instant("2030-01-01T00:00:00Z")
        }
    }
    let x = Expr::parse("coalesce(event.a, entity.b, value, year_of(now()))").unwrap();
    assert_eq!(x.eval(&Clock).unwrap(), int(2030));
    let empty = EmptyScope {
        now: instant(AS_OF),
    };
    assert_eq!(x.eval(&empty).unwrap(), int(2024));
}

#[test]
fn ref_scope_borrows_maps() {
    let event = event_map(R0);
    let entity: HashMap<String, Value> = [("mrr".to_string(), float(49.0))].into();
    let scope = RefScope {
        event: Some(&event),
        entity: Some(&entity),
        vars: None,
        now: instant(AS_OF),
    };
    let x = Expr::parse("event.a * entity.mrr").unwrap();
    assert_eq!(x.eval(&scope).unwrap(), float(245.0));
    assert_eq!(
        Expr::parse("value").unwrap().eval(&scope).unwrap(),
        Value::Null
    );
}

#[test]
fn lookups_and_literals_are_borrowed_not_cloned() {
    let scope = harness();
    let path = Expr::parse("event.s").unwrap();
    assert!(matches!(path.eval_cow(&scope).unwrap(), Cow::Borrowed(_)));
    let literal = Expr::parse("'x'").unwrap();
    assert!(matches!(
        literal.eval_cow(&scope).unwrap(),
        Cow::Borrowed(_)
    ));
    let element = Expr::parse("event.arr[1]").unwrap();
    assert!(matches!(
        element.eval_cow(&scope).unwrap(),
        Cow::Borrowed(Value::String(_))
    ));
    let picked = Expr::parse("coalesce(event.n, event.s)").unwrap();
    assert!(matches!(picked.eval_cow(&scope).unwrap(), Cow::Borrowed(_)));
}

// ---------------------------------------------------------------------------------------------
// Operators (§5)
// ---------------------------------------------------------------------------------------------

#[test]
fn integer_arithmetic_is_checked() {
    assert_eq!(expr("-7 / -2"), int(3));
    assert_eq!(expr("7 / -2"), int(-3));
    assert_eq!(expr("2 ** 62"), int(1 << 62));
    assert_eq!(expr("0 ** 0"), int(1));
    assert_eq!(expr("-1 ** 9999999999"), int(-1));
    assert_eq!(expr("1 ** 99999999999"), int(1));
    expr_err("9223372036854775807 + 1", "overflow");
    expr_err("-9223372036854775807 - 2", "overflow");
    expr_err("9223372036854775807 * 2", "overflow");
    expr_err("(-9223372036854775807 - 1) / -1", "overflow");
    expr_err("-(-9223372036854775807 - 1)", "overflow");
    expr_err("2 ** 63", "overflow");
    expr_err("2 ** 99999999999", "overflow");
    expr_err("0 / 0", "Division by zero");
}

#[test]
fn float_arithmetic_follows_ieee() {
    assert_eq!(expr("0.1 + 0.2"), float(0.1 + 0.2));
    assert_eq!(expr("1.5 + 1"), float(2.5));
    assert_eq!(expr("1 - 2.5"), float(-1.5));
    assert_eq!(expr("2 * 0.5"), float(1.0));
    assert_eq!(expr("2 ** 0.5"), float(2f64.sqrt()));
    assert_eq!(expr("4.0 ** 0.5"), float(2.0));
    assert_eq!(expr("-1.5"), float(-1.5));
    let nan = expr("(-8.0) ** 0.5");
    assert!(matches!(nan, Value::Float(f) if f.is_nan()));
    assert_eq!(expr("10.0 ** 400"), float(f64::INFINITY));
    expr_err("7 / 0.0", "Division by zero");
    expr_err("7.0 / -0.0", "Division by zero");
    expr_err("event.f / (event.a - 5)", "Division by zero");
}

#[test]
fn arithmetic_rejects_other_kinds() {
    expr_err("true + 1", "Cannot apply '+' to Bool and Int");
    expr_err("null + 1", "Cannot apply '+' to Null and Int");
    expr_err("event.n - 1", "Cannot apply '-' to Null and Int");
    expr_err(r#""a" * 2"#, "Cannot apply '*' to String and Int");
    expr_err(r#""a" - "a""#, "Cannot apply '-' to String and String");
    expr_err(
        "event.arr + event.arr",
        "Cannot apply '+' to Array and Array",
    );
    expr_err("1d / 2", "Cannot apply '/' to Duration and Int");
    expr_err("1d * 2.0", "Cannot apply '*' to Duration and Float");
    expr_err("1d ** 2", "Cannot apply '**' to Duration and Int");
    expr_err(
        &format!("1d + {}", at("01-01 00:00")),
        "Cannot apply '+' to Duration and DateTime",
    );
    expr_err(
        &format!("{} + 1.5", at("01-01 00:00")),
        "Cannot apply '+' to DateTime and Float",
    );
    expr_err(
        &format!("{0} + {0}", at("01-01 00:00")),
        "Cannot apply '+' to DateTime and DateTime",
    );
    expr_err("-true", "requires Int or Float");
    expr_err("-1d", "requires Int or Float");
    expr_err(r#"-"a""#, "requires Int or Float");
}

#[test]
fn datetime_and_duration_arithmetic() {
    let jan1 = at("01-01 00:00");
    let jan2 = at("01-02 00:00");
    assert_eq!(expr(&format!("{jan2} - 1d")), ts("2024-01-01T00:00:00Z"));
    assert_eq!(expr(&format!("{jan1} + 90m")), ts("2024-01-01T01:30:00Z"));
    assert_eq!(expr(&format!("{jan1} - {jan1}")), secs(0));
    assert_eq!(expr(&format!("({jan1} + 1d) == {jan2}")), boolean(true));
    assert_eq!(expr(&format!("{jan1} < {jan2}")), boolean(true));
    assert_eq!(expr("1d + 1h"), secs(90_000));
    assert_eq!(expr("1d - 1d"), secs(0));
    assert_eq!(expr("1d * 0"), secs(0));
    assert_eq!(expr("1s * 5000000000"), secs(5_000_000_000));
    expr_err("1d - 2d", "Negative duration");
    expr_fails("1d * 9223372036854775807");
    expr_fails("18446744073709551615s + 1s");
    expr_fails(&format!("{jan1} + 18446744073709551615s"));
    expr_fails(&format!("{jan1} + 9999999999d"));
    // sub-second precision survives subtraction
    let x = "parse_datetime('2024-01-01 00:00:01.5', '%Y-%m-%d %H:%M:%S%.f') - parse_datetime('2024-01-01 00:00:00', '%Y-%m-%d %H:%M:%S')";
    assert_eq!(expr(x), Value::Duration(Duration::from_millis(1500)));
    assert_eq!(
        expr(&format!("({x}) * 3")),
        Value::Duration(Duration::from_millis(4500))
    );
}

#[test]
fn equality_never_fails() {
    assert_eq!(expr("null == 0"), boolean(false));
    assert_eq!(expr("null != null"), boolean(false));
    assert_eq!(expr(r#"1 == "1""#), boolean(false));
    assert_eq!(expr("0 == 0.0"), boolean(true));
    assert_eq!(expr("0.5 == 1 / 2"), boolean(false));
    assert_eq!(expr("true == true"), boolean(true));
    assert_eq!(expr("true == 1"), boolean(false));
    assert_eq!(expr(r#""a" != "b""#), boolean(true));
    assert_eq!(expr("event.arr != event.arr"), boolean(true));
    assert_eq!(expr("1d == 86400s"), boolean(true));
    assert_eq!(expr("1d == 86400"), boolean(false));
    assert_eq!(
        expr(r#"to_float("nan") == to_float("nan")"#),
        boolean(false)
    );
    assert_eq!(expr(r#"to_float("nan") != to_float("nan")"#), boolean(true));
    assert_eq!(expr("event.s == 'héllo'"), boolean(true));
}

#[test]
fn ordering_is_defined_for_four_kind_pairs_only() {
    assert_eq!(expr(r#""abc" < "abd""#), boolean(true));
    assert_eq!(expr(r#""é" > "z""#), boolean(true));
    assert_eq!(expr(r#""" < "a""#), boolean(true));
    assert_eq!(expr("1 < 1.5"), boolean(true));
    assert_eq!(expr("2.0 >= 2"), boolean(true));
    assert_eq!(expr("2 <= 1"), boolean(false));
    assert_eq!(expr("1d > 23h"), boolean(true));
    assert_eq!(expr("-1 < 0"), boolean(true));
    expr_err("event.arr < event.arr", "Cannot compare Array with Array");
    expr_err(r#""a" < 1"#, "Cannot compare String with Int");
    expr_err("null < null", "Cannot compare Null with Null");
    expr_err("1d < 1", "Cannot compare Duration with Int");
    expr_err(
        &format!("{} > 1d", at("01-01 00:00")),
        "Cannot compare DateTime with Duration",
    );
    expr_err(r#"to_float("nan") > 1"#, "NaN");
    expr_err(r#"1 <= to_float("nan")"#, "NaN");
}

#[test]
fn logical_operators_need_bools_on_both_sides() {
    assert_eq!(expr("true && false"), boolean(false));
    assert_eq!(expr("false || true"), boolean(true));
    assert_eq!(expr("true and true"), boolean(true));
    assert_eq!(expr("false or false"), boolean(false));
    expr_err("true and null", "'and' requires Bool on both sides");
    expr_err("1 && true", "'and' requires Bool on both sides");
    expr_err("1 or true", "'or' requires Bool on both sides");
    expr_err("true || 'x'", "'or' requires Bool on both sides");
    expr_err("not null", "'not' requires Bool");
    expr_err("!event.a", "'not' requires Bool");
    // both sides are evaluated: an error on the right is not masked by the left
    expr_err(
        "event.n != null and event.n > 5",
        "Cannot compare Null with Int",
    );
    expr_err("true or 1 / 0 == 1", "Division by zero");
}

#[test]
fn if_evaluates_only_the_selected_branch() {
    assert_eq!(expr("if true then 1 else 1 / 0"), int(1));
    assert_eq!(expr("if false then 1 / 0 else 2"), int(2));
    expr_err("if null then 1 else 2", "'if' condition must be Bool");
    expr_err("if 1 then 1 else 2", "'if' condition must be Bool");
    expr_err("if event.n then 1 else 2", "'if' condition must be Bool");
    assert_eq!(expr("if event.a > 3 then event.s else null"), s("héllo"));
}

#[test]
fn indexing_arrays_and_strings() {
    assert_eq!(expr("event.arr[-3]"), int(1));
    assert_eq!(expr("event.arr[-4]"), Value::Null);
    assert_eq!(expr("event.arr[1]"), s("two"));
    assert_eq!(expr("event.arr[9223372036854775807]"), Value::Null);
    assert_eq!(expr("event.arr[-9223372036854775807 - 1]"), Value::Null);
    assert_eq!(expr(r#""héllo"[-1]"#), s("o"));
    assert_eq!(expr(r#""héllo"[1]"#), s("é"));
    assert_eq!(expr(r#""abc"[3]"#), Value::Null);
    assert_eq!(expr(r#""abc"[-4]"#), Value::Null);
    assert_eq!(expr(r#"""[0]"#), Value::Null);
    assert_eq!(expr(r#"split("a,b,c", ",")[-1]"#), s("c"));
    expr_err("event.arr[null]", "Index must be Int");
    expr_err(r#"event.arr["0"]"#, "Index must be Int");
    expr_err("event.arr[0][0]", "Cannot index into Int");
    expr_err("5[0]", "Cannot index into Int");
    expr_err("true[0]", "Cannot index into Bool");
    expr_err("1d[0]", "Cannot index into Duration");
}

// ---------------------------------------------------------------------------------------------
// Functions (§6)
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_functions_and_arity_fail_at_evaluation() {
    expr_err("foo(1)", "Unknown function 'foo'");
    expr_err("Len('a')", "Unknown function 'Len'");
    expr_err("str::foo(1)", "Unknown function 'str::foo'");
    expr_err("to_lowercase('A')", "Unknown function 'to_lowercase'");
    expr_err("trim('A')", "Unknown function 'trim'");
    expr_err("abs(1)", "Unknown function 'abs'");
    expr_err("len()", "'len' expects 1 argument, got 0");
    expr_err("len('a', 'b')", "'len' expects 1 argument, got 2");
    expr_err(
        "str::substring('a', 1)",
        "'str::substring' expects 3 arguments, got 2",
    );
    expr_err("now(1)", "'now' expects 0 arguments, got 1");
    expr_err(
        "coalesce()",
        "'coalesce' expects at least 1 argument, got 0",
    );
    // arguments are evaluated before the name is looked up
    expr_err("foo(1 / 0)", "Division by zero");
    expr_err("len(1 / 0, 2)", "Division by zero");
}

#[test]
fn warnings_list_calls_that_always_fail() {
    let x = Expr::parse("foo(1) + len(1, 2) + coalesce() + len(str::bar())").unwrap();
    assert_eq!(
        x.warnings(),
        vec![
            "Unknown function 'foo'".to_string(),
            "'len' expects 1 argument, got 2".to_string(),
            "'coalesce' expects at least 1 argument, got 0".to_string(),
            "Unknown function 'str::bar'".to_string(),
        ]
    );
    assert_eq!(call_problems(&x).len(), 4);
    let fine = Expr::parse("coalesce(len(event.s), 0) + to_int('1')").unwrap();
    assert!(fine.warnings().is_empty());
}

#[test]
fn there_are_36_builtins_with_unique_names() {
    let names: std::collections::HashSet<&str> = Builtin::ALL.iter().map(|b| b.name()).collect();
    assert_eq!(names.len(), 36);
    for b in Builtin::ALL {
        assert_eq!(Builtin::lookup(b.name()), Some(b));
    }
    assert_eq!(Builtin::lookup("STR::TRIM"), None);
}

#[test]
fn case_functions() {
    assert_eq!(expr(r#"str::to_lowercase("ÀB")"#), s("àb"));
    assert_eq!(expr(r#"str::to_lowercase("MiXeD 1")"#), s("mixed 1"));
    assert_eq!(expr(r#"str::to_uppercase("héllo")"#), s("HÉLLO"));
    assert_eq!(expr(r#"str::to_uppercase("")"#), s(""));
    expr_err(
        "str::to_lowercase(null)",
        "'str::to_lowercase' expects String, got Null",
    );
    expr_err("str::to_uppercase(1)", "expects String");
}

#[test]
fn trim_removes_unicode_whitespace() {
    assert_eq!(expr("str::trim(\"  a b \\n\")"), s("a b"));
    assert_eq!(expr("str::trim('\u{3000}x\u{a0}')"), s("x"));
    assert_eq!(expr("str::trim('   ')"), s(""));
    expr_err("str::trim(null)", "expects String");
}

#[test]
fn substring_counts_characters() {
    assert_eq!(expr(r#"str::substring("hello", 10, 2)"#), s(""));
    assert_eq!(expr(r#"str::substring("hello", 0, 0)"#), s(""));
    assert_eq!(expr(r#"str::substring("hello", 0, 100)"#), s("hello"));
    assert_eq!(expr(r#"str::substring("hello", -5, -5)"#), s(""));
    expr_err(
        r#"str::substring("hello", 1.0, 2)"#,
        "expects (String, Int, Int), got (String, Float, Int)",
    );
    expr_fails("str::substring(null, 0, 1)");
}

#[test]
fn prefix_suffix_and_substring_tests() {
    assert_eq!(expr(r#"starts_with("abc", "ab")"#), boolean(true));
    assert_eq!(expr(r#"starts_with("abc", "")"#), boolean(true));
    assert_eq!(expr(r#"starts_with("abc", "b")"#), boolean(false));
    assert_eq!(expr(r#"ends_with("abc", "bc")"#), boolean(true));
    assert_eq!(expr(r#"ends_with("", "")"#), boolean(true));
    assert_eq!(expr(r#"ends_with("abc", "abcd")"#), boolean(false));
    assert_eq!(expr(r#"contains("abc", "bc")"#), boolean(true));
    assert_eq!(expr(r#"contains("abc", "x")"#), boolean(false));
    expr_err(
        "starts_with(null, 'a')",
        "'starts_with' expects (String, String), got (Null, String)",
    );
    expr_fails("ends_with('a', 1)");
}

#[test]
fn contains_on_arrays_is_kind_strict() {
    let mut scope = harness();
    scope
        .event
        .insert("arr2".into(), Value::array(vec![int(1), Value::Null]));
    let nested = Value::array(vec![Value::array(vec![int(1)]), s("x")]);
    scope.event.insert("nested".into(), nested);
    assert_eq!(expr("contains(event.arr, 3)"), boolean(false));
    assert_eq!(expr("contains(event.arr, 3.0)"), boolean(true));
    assert_eq!(expr("contains(event.arr, 'two')"), boolean(true));
    assert_eq!(expr("contains(event.arr, null)"), boolean(false));
    assert_eq!(
        eval_in(&scope, "contains(event.arr2, null)").unwrap(),
        boolean(true)
    );
    assert_eq!(
        eval_in(&scope, "contains(event.nested, split('1', ','))").unwrap(),
        boolean(false)
    );
    assert_eq!(
        eval_in(&scope, "contains(split('a,b', ','), 'b')").unwrap(),
        boolean(true)
    );
    expr_err(
        "contains(1, 1)",
        "'contains' expects (String, String) or (Array, any)",
    );
    expr_fails("contains('abc', 1)");
    expr_fails("contains(null, null)");
}

#[test]
fn replace_is_global_and_non_overlapping() {
    assert_eq!(expr(r#"replace("aaa", "a", "b")"#), s("bbb"));
    assert_eq!(expr(r#"replace("aaaa", "aa", "b")"#), s("bb"));
    assert_eq!(expr(r#"replace("aaa", "aa", "b")"#), s("ba"));
    assert_eq!(expr(r#"replace("abc", "x", "y")"#), s("abc"));
    assert_eq!(expr(r#"replace("", "", "-")"#), s("-"));
    assert_eq!(expr(r#"replace("héllo", "", ".")"#), s(".h.é.l.l.o."));
    assert_eq!(expr(r#"replace("555-1234", "-", "")"#), s("5551234"));
    expr_err(
        "replace('a', 'a', null)",
        "expects (String, String, String)",
    );
}

#[test]
fn regex_functions() {
    assert_eq!(
        expr(r#"regex_match("alice@company.com", ".*@company\\.com$")"#),
        boolean(true)
    );
    assert_eq!(expr(r#"regex_match("", "")"#), boolean(true));
    assert_eq!(expr(r#"regex_extract("a1b2", "(\\d)")"#), s("1"));
    assert_eq!(expr(r#"regex_extract("k=v", "(\\w)=(\\w)")"#), s("k"));
    assert_eq!(expr(r#"regex_extract("abc", "")"#), s(""));
    // a pattern built at evaluation time goes through the per-thread cache
    assert_eq!(expr(r#"regex_match("abc", "b" + "c$")"#), boolean(true));
    assert_eq!(expr(r#"regex_match("abd", "b" + "c$")"#), boolean(false));
    expr_err(r#"regex_match("abc", "(" + "")"#, "Invalid regex");
    expr_err(r#"regex_extract("abc", "[")"#, "Invalid regex");
    // look-around and back-references are not supported by the syntax
    expr_err(r#"regex_match("abc", "a(?=b)")"#, "Invalid regex");
    expr_err(r#"regex_match("aa", "(a)\\1")"#, "Invalid regex");
    // an invalid literal pattern is an evaluation error, not a registration error
    assert!(Expr::parse(r#"regex_match(event.s, "(")"#).is_ok());
    expr_err(
        "regex_match(null, 'a')",
        "'regex_match' expects (String, String), got (Null, String)",
    );
    expr_fails("regex_extract('a', 1)");
}

#[test]
fn to_string_renders_every_kind() {
    assert_eq!(expr("to_string('x')"), s("x"));
    assert_eq!(expr("to_string(5)"), s("5"));
    assert_eq!(expr("to_string(-5)"), s("-5"));
    assert_eq!(expr("to_string(1.5)"), s("1.5"));
    assert_eq!(
        expr("to_string(100000000000000000000.0)"),
        s("100000000000000000000")
    );
    assert_eq!(expr("to_string(0.0000001)"), s("0.0000001"));
    assert_eq!(expr("to_string(to_float('nan'))"), s("NaN"));
    assert_eq!(expr("to_string(to_float('-inf'))"), s("-inf"));
    assert_eq!(expr("to_string(false)"), s("false"));
    assert_eq!(expr("to_string(event.missing)"), s(""));
    assert_eq!(expr("to_string(event.dt)"), s("2024-03-15T13:45:30Z"));
    // PROPOSED renderings of DateTime, Duration and Array
    assert_eq!(
        expr(&format!("to_string({})", pdt("2024-01-15 10:30:00"))),
        s("2024-01-15T10:30:00+00:00")
    );
    assert_eq!(expr("to_string(90m)"), s("5400"));
    assert_eq!(expr("to_string(split('a,b', ','))"), s(r#"["a","b"]"#));
    expr_err("to_string()", "'to_string' expects 1 argument, got 0");
}

#[test]
fn len_counts_utf8_bytes_or_elements() {
    assert_eq!(expr("len('')"), int(0));
    assert_eq!(expr("len('abc')"), int(3));
    assert_eq!(expr("len('😀')"), int(4));
    assert_eq!(expr("len(split('a,b', ','))"), int(2));
    expr_err("len(5)", "'len' expects String or Array, got Int");
    expr_err("len(null)", "got Null");
}

#[test]
fn abs_floor_ceil_round() {
    assert_eq!(expr("math::abs(-3)"), int(3));
    assert_eq!(expr("math::abs(3)"), int(3));
    assert_eq!(expr("math::abs(-0.0)"), float(0.0));
    expr_err("math::abs(-9223372036854775807 - 1)", "overflow");
    expr_err(
        "math::abs(null)",
        "'math::abs' expects Int or Float, got Null",
    );
    assert_eq!(expr("floor(1.5)"), int(1));
    assert_eq!(expr("floor(2.0)"), int(2));
    assert_eq!(expr("floor(-7)"), int(-7));
    assert_eq!(expr("ceil(1.2)"), int(2));
    assert_eq!(expr("ceil(-0.5)"), int(0));
    assert_eq!(expr("round(-0.4)"), int(0));
    assert_eq!(expr("round(1.49999)"), int(1));
    assert_eq!(expr("round(-1.5)"), int(-2));
    assert_eq!(expr("round(3.5)"), int(4));
    // saturation and NaN
    assert_eq!(expr("round(to_float('1e300'))"), int(i64::MAX));
    assert_eq!(expr("floor(to_float('-inf'))"), int(i64::MIN));
    assert_eq!(expr("ceil(to_float('NaN'))"), int(0));
    expr_fails("floor('1.5')");
    expr_fails("round(true)");
}

#[test]
fn min_and_max() {
    assert_eq!(expr("min(2, 1)"), int(1));
    assert_eq!(expr("max(2, 1)"), int(2));
    assert_eq!(expr("max(1.5, 2)"), float(2.0));
    assert_eq!(expr("min(1.5, 2.5)"), float(1.5));
    assert_eq!(expr("min(-1, -1.5)"), float(-1.5));
    assert_eq!(expr("min(to_float('nan'), 1)"), float(1.0));
    assert_eq!(expr("max(1, to_float('nan'))"), float(1.0));
    assert!(matches!(expr("max(to_float('nan'), to_float('nan'))"), Value::Float(f) if f.is_nan()));
    expr_err(
        "min(null, 1)",
        "'min' expects (number, number), got (Null, Int)",
    );
    expr_fails("max(1d, 2d)");
    expr_err("min(1)", "'min' expects 2 arguments, got 1");
}

#[test]
fn calendar_fields_in_utc() {
    let t = pdt("2024-03-15 13:45:30");
    assert_eq!(expr(&format!("year_of({t})")), int(2024));
    assert_eq!(expr(&format!("month_of({t})")), int(3));
    assert_eq!(expr(&format!("day_of({t})")), int(15));
    assert_eq!(expr(&format!("hour_of({t})")), int(13));
    assert_eq!(expr(&format!("minute_of({t})")), int(45));
    assert_eq!(expr(&format!("day_of_week({t})")), int(4));
    assert_eq!(
        expr(&format!("day_of_week({})", pdt("2024-03-17 23:59:59"))),
        int(6)
    );
    // an offset in the input does not move the wall clock
    let shifted = r#"parse_datetime("2024-12-31T23:30:00-05:00", "%Y-%m-%dT%H:%M:%S%z")"#;
    assert_eq!(expr(&format!("year_of({shifted})")), int(2024));
    assert_eq!(expr(&format!("hour_of({shifted})")), int(23));
    for f in [
        "year_of",
        "month_of",
        "day_of",
        "hour_of",
        "minute_of",
        "day_of_week",
    ] {
        expr_err(
            &format!("{f}(event.dt)"),
            &format!("'{f}' expects DateTime, got String"),
        );
        expr_fails(&format!("{f}(null)"));
    }
}

#[test]
fn intervals_between_datetimes() {
    let (jan1, jan1_0130) = (at("01-01 00:00"), at("01-01 01:30"));
    assert_eq!(
        expr(&format!("minutes_between({jan1}, {jan1_0130})")),
        int(90)
    );
    assert_eq!(
        expr(&format!("minutes_between({jan1_0130}, {jan1})")),
        int(90)
    );
    assert_eq!(expr(&format!("hours_between({jan1_0130}, {jan1})")), int(1));
    assert_eq!(expr(&format!("days_between({jan1}, {jan1})")), int(0));
    assert_eq!(
        expr(&format!("days_between({jan1}, {})", at("03-01 00:00"))),
        int(60)
    );
    expr_err(
        &format!("days_between(1, {jan1})"),
        "'days_between' expects (DateTime, DateTime), got (Int, DateTime)",
    );
    expr_fails(&format!("hours_between({jan1}, null)"));
}

#[test]
fn days_since_counts_to_now_in_either_direction() {
    assert_eq!(
        expr(&format!("days_since({})", pdt("2024-05-31 00:00:01"))),
        int(0)
    );
    assert_eq!(
        expr(&format!("days_since({})", pdt("2024-06-11 00:00:00"))),
        int(10)
    );
    assert_eq!(expr("days_since(now())"), int(0));
    expr_err(
        "days_since(event.dt)",
        "'days_since' expects DateTime, got String",
    );
}

#[test]
fn date_trunc_units() {
    let t = "parse_datetime('2024-03-15 13:45:30.250', '%Y-%m-%d %H:%M:%S%.f')";
    let trunc = |unit: &str| expr(&format!("date_trunc({t}, '{unit}')"));
    assert_eq!(trunc("year"), ts("2024-01-01T00:00:00Z"));
    assert_eq!(trunc("month"), ts("2024-03-01T00:00:00Z"));
    assert_eq!(trunc("day"), ts("2024-03-15T00:00:00Z"));
    assert_eq!(trunc("hour"), ts("2024-03-15T13:00:00Z"));
    assert_eq!(trunc("minute"), ts("2024-03-15T13:45:00Z"));
    for bad in ["week", "Month", "second", ""] {
        expr_err(&format!("date_trunc({t}, '{bad}')"), "unit must be");
    }
    expr_err(
        "date_trunc(event.dt, 'day')",
        "'date_trunc' expects (DateTime, String)",
    );
}

#[test]
fn parse_datetime_formats() {
    assert_eq!(
        expr(r#"parse_datetime("15/01/2024 10:30", "%d/%m/%Y %H:%M")"#),
        ts("2024-01-15T10:30:00Z")
    );
    assert_eq!(
        expr(r#"parse_datetime("Mon, 15 Jan 2024 10:30:00", "%a, %d %b %Y %H:%M:%S")"#),
        ts("2024-01-15T10:30:00Z")
    );
    assert_eq!(
        expr(r#"parse_datetime("2024-015 10:30:00", "%Y-%j %H:%M:%S")"#),
        ts("2024-01-15T10:30:00Z")
    );
    assert_eq!(
        expr(r#"parse_datetime("2024-01-15 10:30:00.123456789", "%Y-%m-%d %H:%M:%S%.f")"#),
        ts("2024-01-15T10:30:00.123456789Z")
    );
    // the whole input must be consumed and a time is required
    expr_fails(r#"parse_datetime("2024-01-15 10:30:00 extra", "%Y-%m-%d %H:%M:%S")"#);
    expr_fails(r#"parse_datetime("10:30:00", "%H:%M:%S")"#);
    expr_fails(r#"parse_datetime("2024-02-30 10:30:00", "%Y-%m-%d %H:%M:%S")"#);
    assert_eq!(
        expr("parse_datetime(event.ts, '%Y-%m-%dT%H:%M:%SZ')"),
        ts("2024-01-01T00:00:00Z")
    );
    expr_err(
        "parse_datetime(null, '%Y')",
        "'parse_datetime' expects (String, String), got (Null, String)",
    );
}

#[test]
fn split_and_join() {
    assert_eq!(
        expr(r#"split("a,,b", ",")"#),
        Value::array(vec![s("a"), s(""), s("b")])
    );
    assert_eq!(
        expr(r#"split("a--b--", "--")"#),
        Value::array(vec![s("a"), s("b"), s("")])
    );
    assert_eq!(expr(r#"split("abc", "x")"#), Value::array(vec![s("abc")]));
    assert_eq!(expr(r#"join(split("a,b,c", ","), "+")"#), s("a+b+c"));
    assert_eq!(expr(r#"join(split("", ","), "+")"#), s(""));
    assert_eq!(expr(r#"join(split("abc", ""), "")"#), s("abc"));
    let mut scope = harness();
    let mixed = Value::array(vec![
        Value::Bool(true),
        float(1.5),
        int(-2),
        Value::Null,
        secs(60),
        Value::array(vec![int(1)]),
        ts("2024-01-01T00:00:00Z"),
    ]);
    scope.event.insert("mixed".into(), mixed);
    assert_eq!(
        eval_in(&scope, "join(event.mixed, ';')").unwrap(),
        s("true;1.5;-2;null;60;[1];2024-01-01T00:00:00+00:00")
    );
    expr_err(
        "split(null, ',')",
        "'split' expects (String, String), got (Null, String)",
    );
    expr_err(
        "join('a', ',')",
        "'join' expects (Array, String), got (String, String)",
    );
    expr_fails("join(event.arr, null)");
}

#[test]
fn to_int_and_to_float() {
    assert_eq!(expr("to_int(7)"), int(7));
    assert_eq!(expr("to_int(4.9)"), int(4));
    assert_eq!(expr("to_int(false)"), int(0));
    assert_eq!(expr("to_int('-12')"), int(-12));
    assert_eq!(expr("to_int('+12')"), int(12));
    assert_eq!(expr("to_int('007')"), int(7));
    assert_eq!(expr("to_int(to_float('inf'))"), int(i64::MAX));
    assert_eq!(expr("to_int(to_float('nan'))"), int(0));
    for bad in [
        "to_int('')",
        "to_int('42 ')",
        "to_int('1e3')",
        "to_int('99999999999999999999')",
        "to_int(1d)",
        "to_int(event.arr)",
    ] {
        expr_fails(bad);
    }
    assert_eq!(expr("to_float(2)"), float(2.0));
    assert_eq!(expr("to_float(2.5)"), float(2.5));
    assert_eq!(expr("to_float('+1.5')"), float(1.5));
    assert_eq!(expr("to_float('.5')"), float(0.5));
    assert_eq!(expr("to_float('INF')"), float(f64::INFINITY));
    assert_eq!(expr("to_float('-infinity')"), float(f64::NEG_INFINITY));
    assert!(matches!(expr("to_float('NaN')"), Value::Float(f) if f.is_nan()));
    for bad in [
        "to_float(' 1')",
        "to_float('1,5')",
        "to_float('')",
        "to_float(null)",
        "to_float(1d)",
    ] {
        expr_fails(bad);
    }
}

#[test]
fn coalesce_returns_the_first_non_null() {
    assert_eq!(expr("coalesce(event.n, event.a)"), int(5));
    assert_eq!(expr("coalesce(event.missing, null, null)"), Value::Null);
    assert_eq!(expr("coalesce(false, 1)"), boolean(false));
    assert_eq!(expr("coalesce('', 1)"), s(""));
    assert_eq!(expr("coalesce(null, null, null, null, null, 6)"), int(6));
    assert_eq!(expr("coalesce(1 + 1)"), int(2));
}

#[test]
fn string_results_are_bounded() {
    // each level multiplies the length by four: the limit stops it long before memory does
    let mut x = "'ab'".to_string();
    for _ in 0..16 {
        x = format!("replace({x}, '', 'abc')");
    }
    expr_err(&x, "String result too long");
    let mut y = "'abcd'".to_string();
    for _ in 0..6 {
        y = format!("join(split({y}, ''), {y})");
    }
    expr_err(&y, "too long");
}

// ---------------------------------------------------------------------------------------------
// Expr API
// ---------------------------------------------------------------------------------------------

#[test]
fn expr_keeps_its_text_and_prints_a_reparsable_tree() {
    let text = "event.plan != entity.plan and event.mrr > 10 and entity.logins >= 0";
    let x = Expr::parse(text).unwrap();
    assert_eq!(x.text(), text);
    assert_eq!(x.to_string(), text);
    assert_eq!(
        x.ast().to_string(),
        "((event.plan != entity.plan) and (event.mrr > 10)) and (entity.logins >= 0)"
    );
    let y = Expr::parse("-2 ** -x[0] + if a then 'q\"\\n' else str::trim(b, ) * 1.0").unwrap();
    assert_eq!(
        y.ast().to_string(),
        r#"((-2) ** (-x[0])) + (if a then "q\"\n" else str::trim(b) * 1.0)"#
    );
    assert_eq!(Expr::parse(&y.ast().to_string()).unwrap().ast(), y.ast());
}

#[test]
fn ast_shapes() {
    let x = Expr::parse("not a == b").unwrap();
    match x.ast() {
        Ast::Binary(BinaryOp::Eq, left, _) => {
            assert!(matches!(**left, Ast::Unary(UnaryOp::Not, _)))
        }
        other => panic!("unexpected {other:?}"),
    }
    let x = Expr::parse("event.a.b").unwrap();
    match x.ast() {
        Ast::Path(p) => {
            assert_eq!(p.target(), PathTarget::Nested);
            assert_eq!(p.segments().len(), 3);
        }
        other => panic!("unexpected {other:?}"),
    }
    let x = Expr::parse("str::trim(value)").unwrap();
    match x.ast() {
        Ast::Call(c) => {
            assert_eq!(c.name(), "str::trim");
            assert_eq!(c.builtin(), Some(Builtin::Trim));
            assert_eq!(c.args().len(), 1);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn literal_and_path_constructors_only_accept_writable_values() {
    assert!(Literal::new(int(-1)).is_none());
    assert!(Literal::new(float(-0.0)).is_none());
    assert!(Literal::new(float(f64::NAN)).is_none());
    assert!(Literal::new(Value::array(vec![])).is_none());
    assert!(Literal::new(Value::Duration(Duration::from_millis(1))).is_none());
    assert!(Literal::new(float(f64::INFINITY)).is_some());
    assert!(Path::new(&["if", "x"]).is_none());
    assert!(Path::new(&["event", "if"]).is_some());
    assert!(Path::new(&["event", "0"]).is_none());
    assert!(Path::new::<&str>(&[]).is_none());
    assert!(Call::new("str::if", vec![]).is_none());
    assert!(Call::new("a::b::c", vec![]).is_none());
}

#[test]
fn float_literals_print_back_exactly() {
    for f in [
        0.0,
        0.1,
        1.0,
        1.5,
        1e20,
        1e-7,
        5e-324,
        f64::MAX,
        f64::INFINITY,
        123456.789,
    ] {
        let ast = Ast::Literal(Literal::new(float(f)).unwrap());
        let again = Expr::parse(&ast.to_string()).unwrap();
        assert_eq!(again.ast(), &ast, "{f}");
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn identifier() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_]{0,6}"
}

fn non_keyword() -> impl Strategy<Value = String> {
    identifier().prop_filter("not a keyword", |w| {
        ![
            "and", "or", "not", "if", "then", "else", "true", "false", "null",
        ]
        .contains(&w.as_str())
    })
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => identifier(),
        1 => prop::sample::select(vec!["if", "null", "and", "true"]).prop_map(String::from),
    ]
}

fn literal() -> impl Strategy<Value = Ast> {
    let text_char = prop_oneof![
        4 => any::<char>(),
        1 => prop::sample::select(vec!['"', '\'', '\\', '\n', '\r', '\t', 'é']),
    ];
    let value = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0..=i64::MAX).prop_map(Value::Int),
        any::<f64>()
            .prop_map(f64::abs)
            .prop_filter("writable", |f| !f.is_nan())
            .prop_map(Value::Float),
        prop::collection::vec(text_char, 0..8)
            .prop_map(|cs| Value::str(cs.into_iter().collect::<String>())),
        any::<u64>().prop_map(|n| Value::Duration(Duration::from_secs(n))),
    ];
    value.prop_map(|v| Ast::Literal(Literal::new(v).expect("writable literal")))
}

fn path() -> impl Strategy<Value = Ast> {
    (
        prop_oneof![
            Just("event".to_string()),
            Just("entity".to_string()),
            non_keyword()
        ],
        prop::collection::vec(segment(), 0..3),
    )
        .prop_map(|(first, rest)| {
            let mut segments = vec![first];
            segments.extend(rest);
            Ast::Path(Path::new(&segments).expect("valid path"))
        })
}

fn function_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(Builtin::ALL.to_vec()).prop_map(|b| b.name().to_string()),
        non_keyword(),
        (non_keyword(), non_keyword()).prop_map(|(ns, n)| format!("{ns}::{n}")),
    ]
}

fn ast() -> impl Strategy<Value = Ast> {
    let leaf = prop_oneof![literal(), path()];
    leaf.prop_recursive(6, 64, 4, |inner| {
        let boxed = inner.clone().prop_map(Box::new);
        prop_oneof![
            (
                prop::sample::select(vec![UnaryOp::Not, UnaryOp::Neg]),
                boxed.clone()
            )
                .prop_map(|(op, x)| Ast::Unary(op, x)),
            (
                prop::sample::select(BinaryOp::ALL.to_vec()),
                boxed.clone(),
                boxed.clone()
            )
                .prop_map(|(op, a, b)| Ast::Binary(op, a, b)),
            (boxed.clone(), boxed.clone(), boxed.clone()).prop_map(|(c, a, b)| Ast::If(c, a, b)),
            (boxed.clone(), boxed.clone()).prop_map(|(a, i)| Ast::Index(a, i)),
            (function_name(), prop::collection::vec(inner, 0..4)).prop_map(|(name, args)| {
                Ast::Call(Box::new(Call::new(&name, args).expect("valid name")))
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Printing a tree and parsing the text gives the same tree.
    #[test]
    fn printed_trees_parse_back_to_themselves(tree in ast()) {
        let text = tree.to_string();
        let parsed = Expr::parse(&text);
        prop_assert!(parsed.is_ok(), "`{}` failed: {:?}", text, parsed.err());
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.ast(), &tree, "text: {}", text);
        prop_assert_eq!(parsed.ast().to_string(), text);
    }

    /// Any input either fails to parse or parses to a tree that prints back; evaluation
    /// never panics.
    #[test]
    fn arbitrary_input_never_panics(text in "[-+*/()<>=!&|,.:'\"a-z0-9_ \\[\\]\\\\]{0,40}") {
        if let Ok(x) = Expr::parse(&text) {
            let again = Expr::parse(&x.ast().to_string());
            prop_assert!(again.is_ok());
            let again = again.unwrap();
            prop_assert_eq!(again.ast(), x.ast());
            let _ = x.eval(&harness());
        }
    }

    /// Integer `+ - *` either gives the mathematically exact result or an overflow error.
    #[test]
    fn integer_arithmetic_is_exact_or_an_error(a in any::<i64>(), b in any::<i64>()) {
        let mut scope = harness();
        scope.vars.insert("a".into(), Value::Int(a));
        scope.vars.insert("b".into(), Value::Int(b));
        for (op, exact) in [("+", a as i128 + b as i128), ("-", a as i128 - b as i128), ("*", a as i128 * b as i128)] {
            let result = eval_in(&scope, &format!("a {op} b"));
            match i64::try_from(exact) {
                Ok(v) => prop_assert_eq!(result.unwrap(), Value::Int(v)),
                Err(_) => prop_assert!(result.unwrap_err().message.contains("overflow")),
            }
        }
    }
}
