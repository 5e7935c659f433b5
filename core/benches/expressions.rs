//! Expression benchmarks: parsing a few typical expressions, and evaluating a handler guard
//! and a computed property against a realistic scope. After the criterion groups, a plain
//! timed loop prints evaluations per second next to a baseline: the same guard hand-written
//! in Rust over the same maps (the cost of the lookups themselves). Figures only; nothing
//! here fails on time.

use std::hint::black_box;
use std::time::Instant as Clock;

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, Criterion};
use defacto_core::expr::{Expr, MapScope, Scope};
use defacto_core::Value;

const GUARD: &str = "event.plan != entity.plan and event.mrr > 10 and entity.logins >= 0";
const COMPUTED: &str = "coalesce(entity.mrr, 0) * 12";

const PARSED: [&str; 6] = [
    GUARD,
    COMPUTED,
    "str::to_lowercase(str::trim(value))",
    "if entity.mrr > 100 then 'enterprise' else if entity.mrr > 0 then 'paid' else 'free'",
    r"regex_extract(event.order_id, 'ORD-(\\d+)')",
    "days_since(entity.signup_date) > 30 && !contains(split(event.tags, ','), 'test')",
];

/// Normalized event data and entity properties of a typical SaaS customer.
fn realistic_scope() -> MapScope {
    let now = Utc.with_ymd_and_hms(2024, 6, 1, 0, 0, 0).unwrap();
    let mut scope = MapScope::new(now);
    let event: [(&str, Value); 8] = [
        ("email", Value::str("alice@example.com")),
        ("plan", Value::str("pro")),
        ("mrr", Value::Float(49.0)),
        ("seats", Value::Int(5)),
        ("order_id", Value::str("ORD-12345")),
        ("tags", Value::str("web,promo")),
        ("country", Value::str("NL")),
        ("trial", Value::Bool(false)),
    ];
    let entity: [(&str, Value); 10] = [
        ("email", Value::str("alice@example.com")),
        ("plan", Value::str("free")),
        ("mrr", Value::Float(0.0)),
        ("logins", Value::Int(12)),
        ("annual", Value::Float(0.0)),
        ("score", Value::Null),
        (
            "signup_date",
            Value::DateTime(now - chrono::TimeDelta::days(40)),
        ),
        ("country", Value::str("NL")),
        ("seats", Value::Int(1)),
        ("active", Value::Bool(true)),
    ];
    scope.event = event.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    scope.entity = entity
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    scope
        .vars
        .insert("value".into(), Value::str("  Alice@Example.COM "));
    scope
}

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (i, text) in PARSED.iter().enumerate() {
        group.bench_function(format!("expr{i}"), |b| {
            b.iter(|| Expr::parse(black_box(text)).unwrap())
        });
    }
    group.finish();
}

fn bench_eval(c: &mut Criterion) {
    let scope = realistic_scope();
    let mut group = c.benchmark_group("eval");
    for (name, text) in [
        ("guard", GUARD),
        ("computed_property", COMPUTED),
        ("normalize", PARSED[2]),
        ("regex_literal", PARSED[4]),
        ("mixed", PARSED[5]),
    ] {
        let x = Expr::parse(text).unwrap();
        group.bench_function(name, |b| b.iter(|| x.eval(black_box(&scope)).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, bench_parse, bench_eval);

/// The guard written directly in Rust against the same scope.
fn handwritten_guard(scope: &MapScope) -> bool {
    let plan_changed = !scope
        .event_field("plan")
        .unwrap_or(&Value::Null)
        .loose_eq(scope.entity_field("plan").unwrap_or(&Value::Null));
    let mrr = matches!(scope.event_field("mrr"), Some(Value::Float(m)) if *m > 10.0);
    let logins = matches!(scope.entity_field("logins"), Some(Value::Int(n)) if *n >= 0);
    plan_changed & mrr & logins
}

/// Evaluations per second over `n` iterations of `f`.
fn rate(n: u64, mut f: impl FnMut()) -> f64 {
    let start = Clock::now();
    for _ in 0..n {
        f();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn print_figures() {
    const N: u64 = 10_000_000;
    let scope = realistic_scope();
    let guard = Expr::parse(GUARD).unwrap();
    let computed = Expr::parse(COMPUTED).unwrap();
    assert_eq!(guard.eval(&scope).unwrap(), Value::Bool(true));
    assert_eq!(computed.eval(&scope).unwrap(), Value::Float(0.0));

    let guard_rate = rate(N, || {
        black_box(guard.eval(black_box(&scope)).unwrap());
    });
    let computed_rate = rate(N, || {
        black_box(computed.eval(black_box(&scope)).unwrap());
    });
    let baseline_rate = rate(N, || {
        black_box(handwritten_guard(black_box(&scope)));
    });
    println!();
    println!("guard evaluations/s:             {guard_rate:>14.0}  ({GUARD})");
    println!("computed property evaluations/s: {computed_rate:>14.0}  ({COMPUTED})");
    println!(
        "baseline hand-written guard/s:   {baseline_rate:>14.0}  (guard at {:.0}% of baseline)",
        100.0 * guard_rate / baseline_rate
    );
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    print_figures();
}
