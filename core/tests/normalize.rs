//! Normalization (PIPELINE.md §2): contracts of group C that need no storage.

use std::path::Path;

use chrono::{TimeZone, Utc};
use defacto_core::definitions::Definitions;
use defacto_core::normalize::{dedup_call, NormalizedEvent, Normalizer};
use defacto_core::results::{EventFailure, Stage};
use defacto_core::value::{timestamp_text, Instant};
use defacto_core::Value;
use serde_json::{json, Value as Json};

fn as_of() -> Instant {
    Utc.with_ymd_and_hms(2024, 1, 10, 0, 0, 0).unwrap()
}

fn cust() -> Definitions {
    Definitions::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cust")).unwrap()
}

/// A one-entity set whose source `s` has one event `x` with the given mappings (YAML flow).
fn with_mappings(mappings: &str) -> Definitions {
    Definitions::from_yaml_str(&format!(
        "entities:\n  h:\n    starts: s\n    identity: {{k: {{}}}}\n    states: {{s: {{when: {{x: {{effects: [create]}}}}}}}}\n\
         sources:\n  s:\n    event_type: type\n    timestamp: ts\n    events:\n      x: {{mappings: {{k: {{from: k}}, {mappings}}}, hints: {{h: [k]}}}}\n"
    ))
    .unwrap()
}

#[allow(clippy::result_large_err)]
fn norm(defs: &Definitions, source: &str, raw: Json) -> Result<NormalizedEvent, EventFailure> {
    Normalizer::new(defs, as_of()).normalize(source, &raw)
}

fn x(fields: Json) -> Json {
    let mut raw = json!({"type": "x", "ts": "2024-01-01T00:00:00Z", "k": "1"});
    raw.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    raw
}

fn field(defs: &Definitions, raw: Json, name: &str) -> Result<Value, String> {
    norm(defs, "s", raw)
        .map(|e| e.data[name].clone())
        .map_err(|f| f.error)
}

fn app(ty: &str, ts: &str, extra: Json) -> Json {
    let mut raw = json!({"type": ty, "ts": ts});
    raw.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    raw
}

// CONTRACTS C1
#[test]
fn event_type_lookup() {
    let defs = cust();
    let bill = |ty: Json| json!({"event": ty, "created_at": "2024-01-03T10:00:00Z", "id": "o1", "customer_email": "a@x.com", "amount": 50});
    let e = norm(&defs, "billing", bill(json!("order.created"))).unwrap();
    assert_eq!(e.event_type, "order_created");
    let f = norm(&defs, "billing", bill(json!("order_created"))).unwrap_err();
    assert!(
        f.error.contains("Unknown event type 'order_created'"),
        "{}",
        f.error
    );
    assert_eq!(f.handler, None);
    assert_eq!(f.field.as_deref(), Some("event"));
    assert_eq!(f.stage, Stage::Normalization);
    let f = norm(
        &defs,
        "app",
        app("x", "2024-01-01T00:00:00Z", json!({})).tap(|r| r["type"] = json!(5)),
    )
    .unwrap_err();
    assert!(
        f.error
            .contains("Missing or non-string event type field 'type'"),
        "{}",
        f.error
    );
    assert_eq!(f.field.as_deref(), Some("type"));
}

trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}
impl Tap for Json {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

fn ts(raw_ts: Json) -> Result<String, String> {
    let defs = cust();
    let raw = json!({"type": "signup", "ts": raw_ts, "email": "a@x.com"});
    norm(&defs, "app", raw)
        .map(|e| timestamp_text(&e.timestamp))
        .map_err(|f| f.error)
}

// CONTRACTS C2
#[test]
fn timestamps() {
    assert_eq!(
        ts(json!("2024-01-01T10:00:00Z")).unwrap(),
        "2024-01-01T10:00:00+00:00"
    );
    assert_eq!(
        ts(json!("2024-01-01 10:00:00Z")).unwrap(),
        "2024-01-01T10:00:00+00:00"
    );
    assert_eq!(
        ts(json!("2024-01-01t10:00:00z")).unwrap(),
        "2024-01-01T10:00:00+00:00"
    );
    assert_eq!(
        ts(json!("2024-01-01T10:00:00.123456789+05:30")).unwrap(),
        "2024-01-01T04:30:00.123456789+00:00"
    );
    assert_eq!(ts(json!(1704103200)).unwrap(), "2024-01-01T10:00:00+00:00");
    assert_eq!(
        ts(json!(1704103200.5)).unwrap(),
        "2024-01-01T10:00:00.500+00:00"
    );
    for bad in [
        json!("2024-01-01T10:00:00"),
        json!("2024-01-01"),
        json!("1704103200"),
    ] {
        let e = ts(bad.clone()).unwrap_err();
        assert!(e.contains("parse_datetime()"), "{bad}: {e}");
        assert!(e.contains("Failed to parse timestamp"), "{bad}: {e}");
    }
    assert!(ts(json!(true))
        .unwrap_err()
        .contains("must be an ISO 8601 string or Unix epoch number, got boolean"));
    assert!(ts(json!(null))
        .unwrap_err()
        .contains("must be an ISO 8601 string or Unix epoch number, got null"));
    let defs = cust();
    let f = norm(&defs, "app", json!({"type": "signup", "email": "a@x.com"})).unwrap_err();
    assert!(f.error.contains("Missing timestamp field 'ts'"));
    assert_eq!(f.handler.as_deref(), Some("signup"));
    assert_eq!(f.field.as_deref(), Some("ts"));
}

// CONTRACTS C3
#[test]
fn epoch_edge_cases() {
    assert_eq!(ts(json!(-1.5)).unwrap(), "1969-12-31T23:59:58.500+00:00");
    assert!(ts(json!(1704103200000i64))
        .unwrap_err()
        .contains("Timestamp out of range"));
}

// CONTRACTS C4
#[test]
fn coercions() {
    let d = with_mappings("n: {from: n, type: integer}");
    assert_eq!(field(&d, x(json!({"n": "5"})), "n").unwrap(), Value::Int(5));
    assert_eq!(
        field(&d, x(json!({"n": "+5"})), "n").unwrap(),
        Value::Int(5)
    );
    assert_eq!(field(&d, x(json!({"n": 5.9})), "n").unwrap(), Value::Int(5));
    for bad in [json!("5.0"), json!(" 5"), json!(true)] {
        let e = field(&d, x(json!({"n": bad})), "n").unwrap_err();
        assert!(
            e.contains("Type coercion failed for field 'n' to 'integer'"),
            "{e}"
        );
    }
    let d = with_mappings("n: {from: n, type: boolean}");
    for (input, out) in [
        (json!("TRUE"), true),
        (json!("1"), true),
        (json!("Yes"), true),
        (json!("no"), false),
        (json!(0), false),
        (json!(2), true),
    ] {
        assert_eq!(
            field(&d, x(json!({"n": input})), "n").unwrap(),
            Value::Bool(out)
        );
    }
    for bad in [json!("y"), json!(1.0)] {
        assert!(field(&d, x(json!({"n": bad})), "n")
            .unwrap_err()
            .contains("to 'boolean'"));
    }
    let d = with_mappings("n: {from: n, type: string}");
    for (input, out) in [
        (json!(1.0), "1"),
        (json!(1.5), "1.5"),
        (json!(1e20), "100000000000000000000"),
        (json!(true), "true"),
    ] {
        assert_eq!(
            field(&d, x(json!({"n": input})), "n").unwrap(),
            Value::str(out)
        );
    }
    let d = with_mappings("n: {from: n, type: number}");
    for (input, out) in [(json!("10"), 10.0), (json!("1e3"), 1000.0), (json!(3), 3.0)] {
        assert_eq!(
            field(&d, x(json!({"n": input})), "n").unwrap(),
            Value::Float(out)
        );
    }
    let d = with_mappings("n: {from: n, type: datetime}");
    let v = field(&d, x(json!({"n": "2024-02-01T00:00:00+02:00"})), "n").unwrap();
    match v {
        Value::DateTime(t) => assert_eq!(timestamp_text(&t), "2024-01-31T22:00:00+00:00"),
        other => panic!("{other:?}"),
    }
    assert!(field(&d, x(json!({"n": 1704103200})), "n")
        .unwrap_err()
        .contains("to 'datetime'"));
    let d = with_mappings("n: {from: n, type: decimal}");
    assert!(field(&d, x(json!({"n": 1})), "n")
        .unwrap_err()
        .contains("unknown target type"));
    assert_eq!(field(&d, x(json!({})), "n").unwrap(), Value::Null);
}

// CONTRACTS C5
#[test]
fn defaults() {
    let d = with_mappings("d: {from: missing, type: number, default: 7}");
    assert_eq!(field(&d, x(json!({})), "d").unwrap(), Value::Int(7));
    let d = with_mappings("d: {from: x, type: integer, default: 0}");
    assert!(field(&d, x(json!({"x": "abc"})), "d").is_err());
    let d = with_mappings("d: {type: string}, e: {default: 3}");
    assert_eq!(field(&d, x(json!({})), "d").unwrap(), Value::Null);
    assert_eq!(field(&d, x(json!({})), "e").unwrap(), Value::Int(3));
}

// CONTRACTS C6
#[test]
fn from_paths() {
    let d = with_mappings(
        "a: {from: user.email}, b: {from: items.1.id}, c: {from: items.5.id}, u: {from: user}, cu: {compute: \"event.user\"}, ci: {compute: \"event.items[1]\"}",
    );
    let e = norm(
        &d,
        "s",
        x(json!({"user": {"email": "A@X.com"}, "items": [{"id": "a"}, {"id": "b"}]})),
    )
    .unwrap();
    assert_eq!(e.data["a"], Value::str("A@X.com"));
    assert_eq!(e.data["b"], Value::str("b"));
    assert_eq!(e.data["c"], Value::Null);
    assert_eq!(e.data["u"], Value::Null);
    assert_eq!(e.data["cu"], Value::Null);
    assert_eq!(e.data["ci"], Value::Null);
}

// CONTRACTS C7
#[test]
fn compute_sees_raw_fields() {
    let d = with_mappings("first: {from: fn}, full: {compute: \"event.fn + ' ' + event.ln\"}, seen: {compute: \"event.first\"}");
    let e = norm(&d, "s", x(json!({"fn": "Ada", "ln": "L"}))).unwrap();
    assert_eq!(e.data["full"], Value::str("Ada L"));
    assert_eq!(e.data["seen"], Value::Null);
    let d = with_mappings("bad: {compute: \"1 / 0\"}");
    let f = norm(&d, "s", x(json!({}))).unwrap_err();
    assert!(
        f.error
            .contains("Compute expression failed for field 'bad'"),
        "{}",
        f.error
    );
    assert_eq!(f.field.as_deref(), Some("bad"));
}

// CONTRACTS C8
#[test]
fn event_id_values() {
    let defs = cust();
    let e = norm(
        &defs,
        "app",
        app(
            "signup",
            "2024-01-01T10:00:00Z",
            json!({"email": "alice@x.com"}),
        ),
    )
    .unwrap();
    assert_eq!(
        e.event_id,
        "e_a2c7161efe495262d87e1d90e1f88307eb8fff19c560a482f46556d022eca287"
    );
    let e = norm(
        &defs,
        "billing",
        json!({"event": "order.created", "created_at": "2024-01-03T10:00:00Z", "id": "o1", "customer_email": "Alice@X.com", "amount": 50}),
    )
    .unwrap();
    assert_eq!(
        e.event_id,
        "e_0a38eedf9c996795f71866fb1c8e671c5eb3504fd1fab7e7260e7e963772025f"
    );
}

#[test]
fn event_id_of_the_spec_example() {
    // PIPELINE.md §2.6: signup {email: "alice@x.com", n: 1.0, z: null}.
    let mut data = defacto_core::fasthash::FastIndexMap::default();
    data.insert("email".to_string(), Value::str("alice@x.com"));
    data.insert("n".to_string(), Value::Float(1.0));
    data.insert("z".to_string(), Value::Null);
    assert_eq!(
        defacto_core::normalize::event_id("signup", &data, None),
        "e_d984b12fa6f987f02e4b37cd308d4aa60398c08abf85675a4f0df67f44432683"
    );
}

#[test]
fn event_id_covers_every_value_kind() {
    // The id's text form of each kind, pinned (the id text is written without intermediate
    // strings; this id was computed by the earlier, string-by-string form).
    let mut data = defacto_core::fasthash::FastIndexMap::default();
    data.insert("b".to_string(), Value::Bool(true));
    data.insert("a".to_string(), Value::Int(-7));
    data.insert(
        "t".to_string(),
        Value::DateTime(defacto_core::normalize::parse_rfc3339("2024-01-01T10:00:00.5Z").unwrap()),
    );
    data.insert(
        "d".to_string(),
        Value::Duration(std::time::Duration::from_millis(1500)),
    );
    data.insert(
        "l".to_string(),
        Value::array(vec![
            Value::str("q\"u\u{e9}"),
            Value::Float(2.5),
            Value::Null,
        ]),
    );
    assert_eq!(
        defacto_core::normalize::event_id("kinds", &data, None),
        "e_f6c52d59eb2a97df0ec315e8c072b431abe78b5401152b821a051ef925aca027"
    );
}

fn call_dedup(
    defs: &Definitions,
    source: &str,
    raws: Vec<Json>,
    known: &[String],
) -> (Vec<NormalizedEvent>, Vec<String>) {
    let events: Vec<(usize, NormalizedEvent)> = raws
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| norm(defs, source, r).ok().map(|e| (i, e)))
        .collect();
    let d = dedup_call(
        events,
        |e| (e.event_id.as_str(), e.timestamp),
        |id| known.iter().any(|k| k == id),
    );
    (d.accepted, d.duplicate_ids)
}

// CONTRACTS C9
#[test]
fn the_event_id_ignores_time_source_and_unmapped_fields() {
    let defs = cust();
    let a = app(
        "signup",
        "2024-01-01T00:00:00Z",
        json!({"email": "a@x.com"}),
    );
    let later = app(
        "signup",
        "2024-01-05T00:00:00Z",
        json!({"email": "a@x.com"}),
    );
    let utm = app(
        "signup",
        "2024-01-05T00:00:00Z",
        json!({"email": "a@x.com", "utm": "x"}),
    );
    let upper = app(
        "signup",
        "2024-01-01T00:00:00Z",
        json!({"email": "A@X.com"}),
    );
    let (accepted, dups) = call_dedup(&defs, "app", vec![a, later, utm, upper], &[]);
    assert_eq!(accepted.len(), 2);
    assert_eq!(dups.len(), 2);
}

// CONTRACTS C10
#[test]
fn the_event_id_field_list() {
    let defs = cust();
    let bill = |ty: &str, amount: i64| json!({"event": ty, "created_at": "2024-01-03T10:00:00Z", "id": "o1", "amount": amount});
    let (accepted, dups) = call_dedup(
        &defs,
        "billing",
        vec![
            bill("order.created", 50),
            bill("order.created", 60),
            bill("order.shipped", 0),
        ],
        &[],
    );
    assert_eq!(accepted.len(), 2);
    assert_eq!(dups.len(), 1);
}

// CONTRACTS C11 (the part of one call: sort by time, earliest copy wins, ids in input order)
#[test]
fn within_a_call_the_earliest_copy_wins() {
    let defs = cust();
    let s2 = app(
        "signup",
        "2024-01-02T00:00:00Z",
        json!({"email": "a@x.com"}),
    );
    let s1 = app(
        "signup",
        "2024-01-01T00:00:00Z",
        json!({"email": "a@x.com"}),
    );
    let login = app(
        "login",
        "2024-01-03T00:00:00Z",
        json!({"email": "a@x.com", "n": 1}),
    );
    let (accepted, dups) = call_dedup(&defs, "app", vec![s2, s1, login.clone()], &[]);
    assert_eq!(accepted.len(), 2);
    assert_eq!(
        timestamp_text(&accepted[0].timestamp),
        "2024-01-01T00:00:00+00:00"
    );
    assert_eq!(accepted[1].event_type, "login");
    assert_eq!(dups, [accepted[0].event_id.clone()]);
    // Against a ledger that already holds them, everything is a duplicate.
    let known: Vec<String> = accepted.iter().map(|e| e.event_id.clone()).collect();
    let (again, dups) = call_dedup(&defs, "app", vec![login], &known);
    assert!(again.is_empty());
    assert_eq!(dups.len(), 1);
}

// CONTRACTS C13
#[test]
fn hint_extraction() {
    let defs = cust();
    let hints = |extra: Json| {
        norm(&defs, "app", app("signup", "2024-01-01T00:00:00Z", extra))
            .unwrap()
            .hints
    };
    assert_eq!(
        hints(json!({"phone": 5551234}))["customer"]["phone"],
        "5551234"
    );
    assert_eq!(hints(json!({"phone": 12.0}))["customer"]["phone"], "12");
    assert!(!hints(json!({"phone": true, "email": "a@x.com"}))["customer"].contains_key("phone"));
    let e = norm(
        &defs,
        "app",
        app(
            "signup",
            "2024-01-01T00:00:00Z",
            json!({"email": "Alice@X.com"}),
        ),
    )
    .unwrap();
    assert_eq!(e.hints["customer"]["email"], "alice@x.com");
    assert_eq!(e.data["email"], Value::str("Alice@X.com"));
    assert!(
        hints(json!({})).is_empty(),
        "all hint fields null: no hints"
    );

    let broken = Definitions::from_yaml_str(
        "entities:\n  h:\n    starts: s\n    identity: {k: {normalize: \"str::to_lowercase(value) + 1\"}}\n    states: {s: {when: {x: {effects: [create]}}}}\n\
         sources:\n  s:\n    event_type: type\n    timestamp: ts\n    events:\n      x: {mappings: {k: {from: k}}, hints: {h: [k]}}\n",
    )
    .unwrap();
    let e = norm(&broken, "s", x(json!({"k": "ABC"}))).unwrap();
    assert_eq!(e.hints["h"]["k"], "ABC");
}

// CONTRACTS C14
#[test]
fn raw_is_preserved_and_data_holds_exactly_the_mapped_fields() {
    let defs = cust();
    let raw = app(
        "signup",
        "2024-01-01T00:00:00Z",
        json!({"email": "a@x.com", "utm": {"x": [1]}}),
    );
    // (The raw event itself is kept by the caller: `ledger/raw` in the batch product, tested
    // in jobs/tests/pipeline.rs.)
    let e = norm(&defs, "app", raw).unwrap();
    let keys: Vec<&String> = e.data.keys().collect();
    assert_eq!(keys, ["email", "phone"]);
    assert_eq!(e.data["phone"], Value::Null);
}

#[test]
fn failures_carry_raw_source_and_handler() {
    let defs = cust();
    let raw =
        json!({"type": "upgrade", "ts": "2024-01-01T00:00:00Z", "email": "a@x.com", "mrr": "lots"});
    let f = norm(&defs, "app", raw.clone()).unwrap_err();
    assert_eq!(f.raw, raw);
    assert_eq!(f.source, "app");
    assert_eq!(f.handler.as_deref(), Some("upgrade"));
    assert_eq!(f.field.as_deref(), Some("mrr"));
    assert!(f
        .error
        .contains("Type coercion failed for field 'mrr' to 'number'"));
    let f = norm(&defs, "nosuch", raw).unwrap_err();
    assert!(f.error.contains("nosuch"));
}
