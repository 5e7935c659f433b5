//! Interpretation, time rules and SCD2 rows of one entity (PIPELINE.md §6–§9): contracts of
//! groups E, F and G that concern a single entity's replay.

mod common;

use common::{app, cust, iso, t};
use std::path::Path;

use defacto_core::definitions::Definitions;
use defacto_core::history::HistoryRow;
use defacto_core::interpret::{NoRelations, RelateLookup};
use defacto_core::normalize::Normalizer;
use defacto_core::replay::{replay_entity, EntityJob, EntityReplay, LedgerEvent};
use defacto_core::value::{timestamp_text, Instant};
use defacto_core::Value;
use serde_json::{json, Value as Json};

/// CUST extended by YAML edits of the customer entity.
fn cust_with(edit: impl Fn(String) -> String) -> Definitions {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cust");
    let entities = edit(std::fs::read_to_string(dir.join("entities/customer.yaml")).unwrap());
    let sources = std::fs::read_to_string(dir.join("sources/app.yaml")).unwrap();
    let indent = |s: &str| s.lines().map(|l| format!("  {l}\n")).collect::<String>();
    Definitions::from_yaml_str(&format!(
        "entities:\n{}sources:\n{}",
        indent(&entities),
        indent(&sources)
    ))
    .unwrap()
}

/// Raw app events → ledger events with consecutive sequences.
fn events(defs: &Definitions, source: &str, raws: &[Json]) -> Vec<LedgerEvent> {
    let n = Normalizer::new(defs, t("01-10"));
    let mut out: Vec<LedgerEvent> = raws
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let e = n
                .normalize(source, raw)
                .unwrap_or_else(|f| panic!("{}", f.error));
            LedgerEvent {
                sequence: i as i64 + 1,
                event_id: e.event_id,
                event_type: e.event_type,
                timestamp: e.timestamp,
                source: e.source,
                data: e.data,
            }
        })
        .collect();
    out.sort_by_key(|e| e.order_key());
    out
}

fn replay(defs: &Definitions, evs: &[LedgerEvent], as_of: &str) -> EntityReplay {
    replay_with(defs, "customer", evs, as_of, &NoRelations)
}

fn replay_with(
    defs: &Definitions,
    ty: &str,
    evs: &[LedgerEvent],
    as_of: &str,
    relate: &(dyn RelateLookup + Sync),
) -> EntityReplay {
    let job = EntityJob {
        entity_type: ty.into(),
        entity_id: "X".into(),
        events: evs.iter().collect(),
        merged_into: None,
    };
    replay_entity(defs, &job, t(as_of), relate)
}

/// Property by name in a row of a customer.
fn prop(defs: &Definitions, row: &HistoryRow, name: &str) -> Value {
    let i = defs.entities["customer"]
        .properties
        .get_index_of(name)
        .unwrap();
    row.properties[i].clone()
}

fn bounds(row: &HistoryRow) -> (String, Option<String>) {
    (
        timestamp_text(&row.valid_from),
        row.valid_to.as_ref().map(timestamp_text),
    )
}

fn s1(defs: &Definitions) -> Vec<LedgerEvent> {
    events(
        defs,
        "app",
        &[
            app("signup", "01-01 10:00", json!({"email": "Alice@X.com"})),
            app(
                "upgrade",
                "01-02 10:00",
                json!({"email": "alice@x.com", "plan": "pro", "mrr": "49"}),
            ),
            app(
                "login",
                "01-03 10:00",
                json!({"email": "alice@x.com", "n": 1}),
            ),
        ],
    )
}

// CONTRACTS G1 (S1's rows; valid_to chains to the next valid_from)
#[test]
fn scenario_s1_produces_its_three_rows() {
    let defs = cust();
    let r = replay(&defs, &s1(&defs), "01-04");
    let rows = &r.history.rows;
    assert_eq!(rows.len(), 3);
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(
        bounds(&rows[0]),
        (iso("01-01 10:00"), Some(iso("01-02 10:00")))
    );
    assert_eq!(
        bounds(&rows[1]),
        (iso("01-02 10:00"), Some(iso("01-03 10:00")))
    );
    assert_eq!(bounds(&rows[2]), (iso("01-03 10:00"), None));
    let p = |i: usize, n: &str| prop(&defs, &rows[i], n);
    assert_eq!(p(0, "email"), Value::str("Alice@X.com"));
    assert_eq!(p(0, "plan"), Value::str("free"));
    assert_eq!(p(0, "mrr"), Value::Int(0));
    assert_eq!(p(0, "logins"), Value::Int(0));
    assert_eq!(p(0, "annual"), Value::Int(0));
    assert_eq!(p(0, "score"), Value::Null);
    assert_eq!(p(1, "plan"), Value::str("pro"));
    assert_eq!(p(1, "mrr"), Value::Float(49.0));
    assert_eq!(p(1, "annual"), Value::Float(588.0));
    assert_eq!(p(2, "logins"), Value::Int(1));
    assert_eq!(p(2, "annual"), Value::Float(588.0));
    for row in rows {
        assert_eq!(row.state, "active");
        assert_eq!(row.created_time, Some(t("01-01 10:00")));
        assert_eq!(row.state_entered_time, Some(t("01-01 10:00")));
        assert_eq!(row.last_event_time, Some(row.valid_from));
    }
    assert_eq!(r.history.current().unwrap().valid_from, t("01-03 10:00"));
}

// CONTRACTS E1
#[test]
fn early_non_create_events_are_ignored() {
    let defs = cust();
    let evs = events(
        &defs,
        "app",
        &[
            app(
                "upgrade",
                "01-03 09:00",
                json!({"email": "b@x.com", "plan": "pro", "mrr": 5}),
            ),
            app("signup", "01-03 10:00", json!({"email": "b@x.com"})),
        ],
    );
    let r = replay(&defs, &evs, "01-04");
    assert!(r.failures.is_empty());
    assert_eq!(r.history.rows.len(), 1);
    assert_eq!(prop(&defs, &r.history.rows[0], "plan"), Value::str("free"));
}

// CONTRACTS E2
#[test]
fn create_is_idempotent() {
    let defs = cust_with(|y| {
        y.replace(
            "        bump:\n",
            "        refresh:\n          effects: [create, { set: { property: plan, value: gold } }]\n        bump:\n",
        )
    });
    let mut defs = defs;
    // `refresh` arrives as a `cancel`-shaped app event.
    let src = defs.sources.get_mut("app").unwrap();
    let mut ev = src.events["cancel"].clone();
    ev.name = "refresh".into();
    src.events.insert("refresh".into(), ev);
    let evs = events(
        &defs,
        "app",
        &[
            app("signup", "01-01", json!({"email": "a@x.com"})),
            app(
                "upgrade",
                "01-02",
                json!({"email": "a@x.com", "plan": "pro", "mrr": 5}),
            ),
            app("refresh", "01-03", json!({"email": "a@x.com"})),
        ],
    );
    let r = replay(&defs, &evs, "01-04");
    let rows = &r.history.rows;
    assert_eq!(rows.len(), 3);
    assert_eq!(prop(&defs, &rows[2], "plan"), Value::str("gold"));
    assert_eq!(
        prop(&defs, &rows[2], "mrr"),
        Value::Float(5.0),
        "create did not reset properties"
    );
    assert_eq!(rows[2].created_time, Some(t("01-01")));
}

// CONTRACTS E3
#[test]
fn a_false_guard_changes_nothing() {
    let defs = cust();
    let mut evs = s1(&defs);
    evs.extend(
        events(
            &defs,
            "app",
            &[app(
                "upgrade",
                "01-05",
                json!({"email": "alice@x.com", "plan": "pro", "mrr": "50"}),
            )],
        )
        .into_iter()
        .map(|mut e| {
            e.sequence = 4;
            e
        }),
    );
    let r = replay(&defs, &evs, "01-06");
    assert_eq!(r.history.rows.len(), 3);
    assert!(r.failures.is_empty());
    assert_eq!(
        r.slot.entity.as_ref().unwrap().last_event_time,
        Some(t("01-03 10:00"))
    );
}

// CONTRACTS E4, CONTRACTS E6 (increment of a null property fails that event only),
// CONTRACTS K3 (the interpretation failure's shape)
#[test]
fn a_failing_event_is_rolled_back_alone() {
    let defs = cust();
    let evs = events(
        &defs,
        "app",
        &[
            app("signup", "01-01", json!({"email": "a@x.com"})),
            app("bump", "01-02", json!({"email": "a@x.com"})),
            app("login", "01-03", json!({"email": "a@x.com", "n": 1})),
        ],
    );
    let r = replay(&defs, &evs, "01-04");
    let rows = &r.history.rows;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].valid_from, t("01-03"));
    assert_eq!(prop(&defs, &rows[1], "logins"), Value::Int(1));
    assert_eq!(prop(&defs, &rows[1], "score"), Value::Null);
    assert_eq!(r.failures.len(), 1);
    let f = &r.failures[0].1;
    assert_eq!(f.stage, defacto_core::results::Stage::Interpretation);
    assert_eq!(f.entity_id.as_deref(), Some("X"));
    assert_eq!(f.event_id.as_deref(), Some(evs[1].event_id.as_str()));
    assert!(f.error.contains("increment 'score' failed"), "{}", f.error);
    assert!(f.error.contains("cannot add Null and Int"), "{}", f.error);
    assert_eq!(f.entity_type.as_deref(), Some("customer"));
    assert!(!f.recoverable);
    assert!(
        f.raw.as_object().is_some_and(|o| o.is_empty()),
        "empty raw, not {}",
        f.raw
    );
}

// CONTRACTS E4 (a failing event is rolled back whole: the sets, increments and transition
// its handler applied before the failing effect are undone, and its time is not recorded)
#[test]
fn effects_applied_before_a_failure_are_undone() {
    let defs = small(
        "          first: {effects: [{set: {property: s, value: x}}, {increment: {property: n, by: 1}}]}\n          \
         bad: {effects: [{set: {property: s, value: y}}, {increment: {property: n, by: 5}}, {transition: {to: open}}, {set: {property: s, value: w}}, {increment: {property: x, by: 1}}]}\n",
        "      s: {type: string}\n      n: {type: integer, default: 0}\n      x: {type: integer}\n",
        &["first", "bad"],
    );
    let r = small_replay(
        &defs,
        &[
            ev("open", "01-01", json!({})),
            ev("first", "01-02", json!({})),
            ev("bad", "01-03", json!({})),
            ev("first", "01-04", json!({})),
        ],
        "01-05",
    );
    assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
    assert!(r.failures[0].1.error.contains("increment 'x' failed"));
    let rows = &r.history.rows;
    let froms: Vec<_> = rows.iter().map(|row| row.valid_from).collect();
    assert_eq!(froms, vec![t("01-01"), t("01-02"), t("01-04")]);
    // The event after the failure starts from the state before it: n counts 1 + 1, not 1 + 5.
    assert_eq!(eprop(&defs, &rows[2], "s"), Value::str("x"));
    assert_eq!(eprop(&defs, &rows[2], "n"), Value::Int(2));
    assert_eq!(eprop(&defs, &rows[2], "x"), Value::Null);
    assert_eq!(rows[2].state_entered_time, Some(t("01-01")));
    // Ending on the failure: the entity is as the event before left it.
    let r = small_replay(
        &defs,
        &[
            ev("open", "01-01", json!({})),
            ev("first", "01-02", json!({})),
            ev("bad", "01-03", json!({})),
        ],
        "01-05",
    );
    let entity = r.slot.entity.as_ref().unwrap();
    assert_eq!(entity.last_event_time, Some(t("01-02")));
    assert_eq!(entity.state_entered_time, Some(t("01-01")));
    assert_eq!(entity.properties, r.history.rows[1].properties);
}

/// A one-entity definition set `e` with state `open`, property `s`/`x`/`y`/`n`, the given
/// handlers in `open`, and one source event per handler name (mapping `k`, `flag`, `v`).
fn small(handlers: &str, props: &str, extra_events: &[&str]) -> Definitions {
    let mut names: Vec<String> = extra_events.iter().map(|s| s.to_string()).collect();
    names.push("open".into());
    let events: String = names
        .iter()
        .map(|n| format!("      {n}: {{mappings: {{k: {{from: k}}, flag: {{from: flag}}, v: {{from: v}}}}, hints: {{e: [k]}}}}\n"))
        .collect();
    let yaml = format!(
        "entities:\n  e:\n    starts: open\n    identity: {{k: {{}}}}\n    properties:\n{props}    states:\n      open:\n        when:\n          open: {{effects: [create]}}\n{handlers}\
         sources:\n  s:\n    event_type: type\n    timestamp: ts\n    events:\n{events}"
    );
    Definitions::from_yaml_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn ev(ty: &str, at: &str, extra: Json) -> Json {
    let mut raw = json!({"type": ty, "ts": iso(at), "k": "1"});
    raw.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    raw
}

fn small_replay(defs: &Definitions, raws: &[Json], as_of: &str) -> EntityReplay {
    let evs = events(defs, "s", raws);
    replay_with(defs, "e", &evs, as_of, &NoRelations)
}

fn eprop(defs: &Definitions, row: &HistoryRow, name: &str) -> Value {
    let i = defs.entities["e"].properties.get_index_of(name).unwrap();
    row.properties[i].clone()
}

// CONTRACTS E5
#[test]
fn changes_are_not_diffs() {
    let defs = small(
        "          same: {effects: [{set: {property: s, value: x}}]}\n          again: {effects: [{transition: {to: open}}]}\n",
        "      s: {type: string}\n",
        &["same", "again"],
    );
    let r = small_replay(
        &defs,
        &[
            ev("open", "01-01", json!({})),
            ev("same", "01-02", json!({"v": 1})),
            ev("same", "01-03", json!({"v": 2})),
            ev("again", "01-04", json!({})),
        ],
        "01-05",
    );
    let rows = &r.history.rows;
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3].state_entered_time, Some(t("01-04")));
    assert_eq!(eprop(&defs, &rows[2], "s"), Value::str("x"));
}

// CONTRACTS E6
#[test]
fn increment_by_a_float_gives_a_float() {
    let defs = small(
        "          inc: {effects: [{increment: {property: n}}]}\n          half: {effects: [{increment: {property: n, by: 2.5}}]}\n",
        "      n: {type: integer, default: 0}\n",
        &["inc", "half"],
    );
    let r = small_replay(
        &defs,
        &[
            ev("open", "01-01", json!({})),
            ev("inc", "01-02", json!({})),
            ev("half", "01-03", json!({})),
        ],
        "01-04",
    );
    assert_eq!(eprop(&defs, &r.history.rows[1], "n"), Value::Int(1));
    assert_eq!(eprop(&defs, &r.history.rows[2], "n"), Value::Float(3.5));
}

// CONTRACTS E7
#[test]
fn effects_compose_and_conditions_see_earlier_effects() {
    let props = "      x: {type: integer}\n      y: {type: integer}\n";
    let forward = small(
        "          go: {effects: [{set: {property: x, value: 5}}, {set: {property: y, value: 1, condition: \"entity.x == 5\"}}]}\n",
        props,
        &["go"],
    );
    let r = small_replay(
        &forward,
        &[ev("open", "01-01", json!({})), ev("go", "01-02", json!({}))],
        "01-03",
    );
    let last = r.history.current().unwrap();
    assert_eq!(eprop(&forward, last, "x"), Value::Int(5));
    assert_eq!(eprop(&forward, last, "y"), Value::Int(1));
    let reversed = small(
        "          go: {effects: [{set: {property: y, value: 1, condition: \"entity.x == 5\"}}, {set: {property: x, value: 5}}]}\n",
        props,
        &["go"],
    );
    let r = small_replay(
        &reversed,
        &[ev("open", "01-01", json!({})), ev("go", "01-02", json!({}))],
        "01-03",
    );
    let last = r.history.current().unwrap();
    assert_eq!(eprop(&reversed, last, "x"), Value::Int(5));
    assert_eq!(eprop(&reversed, last, "y"), Value::Null);
}

// CONTRACTS E8
#[test]
fn non_boolean_conditions_skip_the_effect() {
    let defs = small(
        "          go: {effects: [{set: {property: s, value: cond, condition: \"event.flag\"}}]}\n",
        "      s: {type: string}\n",
        &["go"],
    );
    for (flag, applied) in [
        (json!(null), false),
        (json!("yes"), false),
        (json!(true), true),
    ] {
        let r = small_replay(
            &defs,
            &[
                ev("open", "01-01", json!({})),
                ev("go", "01-02", json!({"flag": flag})),
            ],
            "01-03",
        );
        assert!(r.failures.is_empty());
        let last = r.history.current().unwrap();
        assert_eq!(
            eprop(&defs, last, "s") == Value::str("cond"),
            applied,
            "flag {flag}"
        );
    }
}

// CONTRACTS E9
#[test]
fn always_handlers_run_in_every_state_and_fail_alone_before_creation() {
    let defs = cust_with(|y| {
        y.replace(
            "  relationships:\n    - { type: placed, target: order, cardinality: has_many }\n",
            "  relationships:\n    - { type: placed, target: order, cardinality: has_many }\n  always:\n    ping:\n      effects: [ { set: { property: plan, value: pinged } } ]\n",
        )
    });
    let mut defs = defs;
    let src = defs.sources.get_mut("app").unwrap();
    let mut ping = src.events["cancel"].clone();
    ping.name = "ping".into();
    src.events.insert("ping".into(), ping);
    let evs = events(
        &defs,
        "app",
        &[
            app("ping", "01-01", json!({"email": "a@x.com"})),
            app("signup", "01-02", json!({"email": "a@x.com"})),
            app("ping", "01-03", json!({"email": "a@x.com", "x": 1})),
        ],
    );
    let r = replay(&defs, &evs, "01-04");
    assert_eq!(r.failures.len(), 1);
    assert!(r.failures[0]
        .1
        .error
        .contains("set property 'plan' but entity doesn't exist"));
    assert_eq!(r.history.rows.len(), 2);
    assert_eq!(
        prop(&defs, r.history.current().unwrap(), "plan"),
        Value::str("pinged")
    );
}

// CONTRACTS E10
#[test]
fn computed_properties_see_the_previous_pass() {
    let defs = small(
        "          go: {effects: [{set: {property: s, from: event.v}}]}\n",
        "      s: {type: integer}\n      u: {type: integer, compute: \"coalesce(entity.w, 0) + 1\"}\n      w: {type: integer, compute: \"coalesce(entity.u, 0) + 10\"}\n",
        &["go"],
    );
    let r = small_replay(
        &defs,
        &[
            ev("open", "01-01", json!({})),
            ev("go", "01-02", json!({"v": 1})),
            ev("go", "01-03", json!({"v": 2})),
        ],
        "01-04",
    );
    let uw: Vec<(Value, Value)> = r
        .history
        .rows
        .iter()
        .map(|row| (eprop(&defs, row, "u"), eprop(&defs, row, "w")))
        .collect();
    assert_eq!(
        uw,
        [
            (Value::Int(1), Value::Int(10)),
            (Value::Int(11), Value::Int(11)),
            (Value::Int(12), Value::Int(21))
        ]
    );
}

// CONTRACTS E11
#[test]
fn system_attributes_are_not_in_scope() {
    let defs = small(
        "          go: {effects: [{set: {property: a, from: event.v.email}}, {set: {property: b, compute: \"to_string(entity.state)\"}}, {set: {property: c, compute: \"to_string(event.timestamp)\"}}]}\n",
        "      a: {type: string}\n      b: {type: string}\n      c: {type: string}\n",
        &["go"],
    );
    let r = small_replay(
        &defs,
        &[
            ev("open", "01-01", json!({})),
            ev("go", "01-02", json!({"v": "direct"})),
        ],
        "01-03",
    );
    let last = r.history.current().unwrap();
    assert_eq!(
        eprop(&defs, last, "a"),
        Value::str("direct"),
        "only the first two segments of `from` count"
    );
    assert_eq!(eprop(&defs, last, "b"), Value::str(""));
    assert_eq!(eprop(&defs, last, "c"), Value::str(""));
}

// CONTRACTS E15
#[test]
fn runtime_expression_errors_fail_the_event() {
    let defs = small(
        "          go: {guard: \"upper(event.v) != 'X'\", effects: [{set: {property: s, value: y}}]}\n          nb: {guard: \"entity.s\", effects: [{set: {property: s, value: y}}]}\n",
        "      s: {type: string, default: a}\n",
        &["go", "nb"],
    );
    let r = small_replay(
        &defs,
        &[
            ev("open", "01-01", json!({})),
            ev("go", "01-02", json!({"v": "x"})),
            ev("nb", "01-03", json!({})),
        ],
        "01-04",
    );
    assert_eq!(r.failures.len(), 2);
    assert!(
        r.failures[0].1.error.contains("Unknown function 'upper'"),
        "{}",
        r.failures[0].1.error
    );
    assert!(r.failures[0].1.error.contains("guard evaluation failed"));
    assert!(
        r.failures[1]
            .1
            .error
            .contains("guard must evaluate to boolean"),
        "{}",
        r.failures[1].1.error
    );
    assert_eq!(r.history.rows.len(), 1);
}

// CONTRACTS F1
#[test]
fn rules_fire_at_their_crossing_instants() {
    let defs = cust();
    let evs = events(
        &defs,
        "app",
        &[app("signup", "01-01", json!({"email": "a@x.com"}))],
    );
    let r = replay(&defs, &evs, "03-01");
    let rows = &r.history.rows;
    let got: Vec<(&str, (String, Option<String>))> =
        rows.iter().map(|r| (r.state.as_str(), bounds(r))).collect();
    assert_eq!(
        got,
        [
            ("active", (iso("01-01"), Some(iso("01-31")))),
            ("dormant", (iso("01-31"), Some(iso("02-10")))),
            ("churned", (iso("02-10"), None)),
        ]
    );
    assert_eq!(rows[1].state_entered_time, Some(t("01-31")));
    assert_eq!(rows[1].last_event_time, Some(t("01-31")));
    assert_eq!(rows[2].state_entered_time, Some(t("02-10")));
    assert_eq!(rows[2].last_event_time, Some(t("02-10")));
    assert_eq!((r.rule_firings, r.rule_transitions), (2, 2));
}

// CONTRACTS F2, CONTRACTS F9 (evaluating in steps gives the same rows; sweeps never go back)
#[test]
fn rules_do_not_depend_on_evaluation_frequency() {
    let defs = cust();
    let evs = events(
        &defs,
        "app",
        &[app("signup", "01-01", json!({"email": "a@x.com"}))],
    );
    let once = replay(&defs, &evs, "03-01");
    let machine = defacto_core::interpret::Machine::new(&defs.entities["customer"], t("03-01"));
    let mut stepped = replay(&defs, &evs, "01-02");
    for at in ["02-05", "03-01", "01-15"] {
        let mut snaps = Vec::new();
        machine
            .evaluate_rules(&mut stepped.slot, t(at), &mut snaps)
            .unwrap();
        for s in &snaps {
            stepped.history.apply("X", s);
        }
    }
    assert_eq!(stepped.history, once.history);
    assert_eq!(stepped.slot, once.slot);
}

// CONTRACTS F3
#[test]
fn rules_due_before_an_event_fire_first() {
    let defs = cust();
    let evs = events(
        &defs,
        "app",
        &[
            app("signup", "01-01", json!({"email": "a@x.com"})),
            app("login", "02-05", json!({"email": "a@x.com", "n": 1})),
        ],
    );
    let r = replay(&defs, &evs, "02-06");
    let got: Vec<(&str, (String, Option<String>))> = r
        .history
        .rows
        .iter()
        .map(|r| (r.state.as_str(), bounds(r)))
        .collect();
    assert_eq!(
        got,
        [
            ("active", (iso("01-01"), Some(iso("01-31")))),
            ("dormant", (iso("01-31"), Some(iso("02-05")))),
            ("active", (iso("02-05"), None)),
        ]
    );
    assert_eq!(prop(&defs, &r.history.rows[2], "logins"), Value::Int(1));
}

// CONTRACTS F4
#[test]
fn thresholds_are_strict() {
    let defs = cust();
    let evs = events(
        &defs,
        "app",
        &[app("signup", "01-01", json!({"email": "a@x.com"}))],
    );
    let at = |s: &str| {
        replay_at(
            &defs,
            &evs,
            chrono::DateTime::parse_from_rfc3339(s).unwrap().into(),
        )
    };
    assert_eq!(at("2024-01-31T00:00:00Z").history.rows.len(), 1);
    let r = at("2024-01-31T00:00:01Z");
    assert_eq!(r.history.rows.len(), 2);
    assert_eq!(r.history.rows[1].valid_from, t("01-31"));
}

fn replay_at(defs: &Definitions, evs: &[LedgerEvent], as_of: Instant) -> EntityReplay {
    let job = EntityJob {
        entity_type: "customer".into(),
        entity_id: "X".into(),
        events: evs.iter().collect(),
        merged_into: None,
    };
    replay_entity(defs, &job, as_of, &NoRelations)
}

// CONTRACTS F5
#[test]
fn inactivity_counts_only_changes() {
    let defs = cust();
    let evs = events(
        &defs,
        "app",
        &[
            app("signup", "01-01", json!({"email": "a@x.com"})),
            app("link", "01-20", json!({"email": "a@x.com"})),
        ],
    );
    let r = replay(&defs, &evs, "02-01");
    assert_eq!(r.history.rows[1].state, "dormant");
    assert_eq!(r.history.rows[1].valid_from, t("01-31"));
}

fn acct(rule_effects: &str, extra_props: &str) -> Definitions {
    Definitions::from_yaml_str(&format!(
        "entities:\n  acct:\n    starts: new\n    identity: {{k: {{}}}}\n    properties:\n      flagged: {{type: integer, default: 0}}\n{extra_props}    states:\n      new:\n        when: {{open: {{effects: [create]}}}}\n        after:\n          - {{type: state_duration, threshold: 1d, effects: {rule_effects}}}\n\
         sources:\n  s:\n    event_type: type\n    timestamp: ts\n    events:\n      open: {{mappings: {{k: {{from: k}}}}, hints: {{acct: [k]}}}}\n"
    ))
    .unwrap()
}

fn acct_replay(defs: &Definitions, as_of: &str) -> EntityReplay {
    let evs = events(defs, "s", &[ev("open", "01-01", json!({}))]);
    replay_with(defs, "acct", &evs, as_of, &NoRelations)
}

fn aprop(defs: &Definitions, row: &HistoryRow, name: &str) -> Value {
    row.properties[defs.entities["acct"].properties.get_index_of(name).unwrap()].clone()
}

// CONTRACTS F6, CONTRACTS F10
#[test]
fn set_only_rules_fire_once_and_recompute() {
    let defs = acct(
        "[{set: {property: flagged, compute: \"entity.flagged + 1\"}}]",
        "      double: {type: integer, compute: \"entity.flagged * 2\"}\n",
    );
    let r = acct_replay(&defs, "01-05");
    let rows = &r.history.rows;
    assert_eq!(rows.len(), 2);
    assert_eq!(bounds(&rows[0]), (iso("01-01"), Some(iso("01-02"))));
    assert_eq!(aprop(&defs, &rows[0], "flagged"), Value::Int(0));
    assert_eq!(aprop(&defs, &rows[1], "flagged"), Value::Int(1));
    assert_eq!(aprop(&defs, &rows[1], "double"), Value::Int(2));
    assert_eq!(
        rows[1].last_event_time,
        Some(t("01-01")),
        "a set-only firing leaves last_event_time"
    );
    let again = acct_replay(&defs, "01-10");
    assert_eq!(again.history, r.history);
}

// CONTRACTS F7
#[test]
fn ignored_effect_kinds_and_conditions_in_rules() {
    let defs = acct("[{increment: {property: flagged}}, create]", "");
    let r = acct_replay(&defs, "01-05");
    assert_eq!(r.history.rows.len(), 1);
    assert_eq!(r.rule_firings, 0);
    let defs = acct(
        "[{set: {property: flagged, value: 5, condition: \"false\"}}]",
        "",
    );
    let r = acct_replay(&defs, "01-05");
    assert_eq!(
        aprop(&defs, r.history.current().unwrap(), "flagged"),
        Value::Int(5)
    );
}

// CONTRACTS F8
#[test]
fn reference_times_by_rule_type() {
    let sub = |kind: &str| {
        Definitions::from_yaml_str(&format!(
            "entities:\n  sub:\n    starts: trial\n    identity: {{k: {{}}}}\n    states:\n      trial:\n        when:\n          open: {{effects: [create]}}\n          ping: {{effects: [{{transition: {{to: trial}}}}]}}\n        after: [{{type: {kind}, threshold: 10d, effects: [{{transition: {{to: expired}}}}]}}]\n      expired: {{}}\n\
             sources:\n  s:\n    event_type: type\n    timestamp: ts\n    events:\n      open: {{mappings: {{k: {{from: k}}}}, hints: {{sub: [k]}}}}\n      ping: {{mappings: {{k: {{from: k}}}}, hints: {{sub: [k]}}}}\n"
        ))
        .unwrap()
    };
    let run = |defs: &Definitions, as_of: &str| {
        let evs = events(
            defs,
            "s",
            &[
                ev("open", "01-01", json!({})),
                ev("ping", "01-05", json!({})),
            ],
        );
        replay_with(defs, "sub", &evs, as_of, &NoRelations)
    };
    let d = sub("state_duration");
    assert_eq!(run(&d, "01-12").history.current().unwrap().state, "trial");
    let r = run(&d, "01-16");
    assert_eq!(r.history.current().unwrap().state, "expired");
    assert_eq!(r.history.current().unwrap().valid_from, t("01-15"));
    let d = sub("expiration");
    let r = run(&d, "01-12");
    assert_eq!(r.history.current().unwrap().state, "expired");
    assert_eq!(r.history.current().unwrap().valid_from, t("01-11"));
}

// CONTRACTS G2
#[test]
fn several_changes_at_one_instant_give_one_row() {
    let defs = cust();
    let evs = events(
        &defs,
        "app",
        &[
            app("signup", "01-01 10:00", json!({"email": "a@x.com"})),
            app(
                "upgrade",
                "01-01 10:00",
                json!({"email": "a@x.com", "plan": "pro", "mrr": 10}),
            ),
            app("login", "01-01 10:00", json!({"email": "a@x.com", "n": 1})),
        ],
    );
    let r = replay(&defs, &evs, "01-02");
    assert_eq!(r.history.rows.len(), 1);
    let row = &r.history.rows[0];
    assert_eq!(prop(&defs, row, "plan"), Value::str("pro"));
    assert_eq!(prop(&defs, row, "mrr"), Value::Float(10.0));
    assert_eq!(prop(&defs, row, "logins"), Value::Int(1));
    assert_eq!(prop(&defs, row, "annual"), Value::Float(120.0));
    assert_eq!(row.valid_to, None);
}

// CONTRACTS G3
#[test]
fn ties_follow_input_order() {
    let defs = cust();
    let evs = events(
        &defs,
        "app",
        &[
            app(
                "upgrade",
                "01-01 10:00",
                json!({"email": "a@x.com", "plan": "pro", "mrr": 10}),
            ),
            app("signup", "01-01 10:00", json!({"email": "a@x.com"})),
            app("login", "01-01 10:00", json!({"email": "a@x.com", "n": 1})),
        ],
    );
    let r = replay(&defs, &evs, "01-02");
    assert_eq!(r.history.rows.len(), 1);
    assert_eq!(prop(&defs, &r.history.rows[0], "plan"), Value::str("free"));
    assert_eq!(prop(&defs, &r.history.rows[0], "logins"), Value::Int(1));
}

struct OneCustomer;
impl RelateLookup for OneCustomer {
    fn lookup(&self, entity_type: &str, field: &str, value: &str) -> Option<String> {
        (entity_type == "customer" && field == "email" && value == "alice@x.com")
            .then(|| "A".to_string())
    }
    fn normalize_hint(&self, _: &str, _: &str, value: &str) -> String {
        value.to_lowercase()
    }
}

// CONTRACTS E13, CONTRACTS E14, CONTRACTS G15 (relationship rows of one entity)
#[test]
fn relate_writes_one_open_row_per_target() {
    let defs = cust();
    let bill = |id: &str, at: &str, email: Option<&str>| {
        let mut raw =
            json!({"event": "order.created", "created_at": iso(at), "id": id, "amount": 50});
        if let Some(e) = email {
            raw["customer_email"] = json!(e);
        }
        raw
    };
    let evs = events(
        &defs,
        "billing",
        &[bill("o1", "01-03 11:00", Some("Alice@X.com"))],
    );
    let r = replay_with(&defs, "order", &evs, "01-04", &OneCustomer);
    let rels: Vec<_> = r.relationships.all().collect();
    assert_eq!(rels.len(), 1);
    assert_eq!(
        (
            rels[0].relationship_type.as_str(),
            rels[0].target_id.as_str()
        ),
        ("placed_by", "A")
    );
    assert_eq!(
        (rels[0].valid_from, rels[0].valid_to),
        (t("01-03 11:00"), None)
    );
    let total = defs.entities["order"]
        .properties
        .get_index_of("total")
        .unwrap();
    assert_eq!(r.history.rows[0].properties[total], Value::Float(50.0));

    let evs = events(&defs, "billing", &[bill("o-a", "01-04", None)]);
    let r = replay_with(&defs, "order", &evs, "01-05", &OneCustomer);
    assert_eq!(r.history.rows.len(), 1);
    assert_eq!(r.relationships.all().count(), 0);
    assert!(r.failures.is_empty());
}

// CONTRACTS E16
#[test]
fn undeclared_relationship_types_write_no_rows() {
    let defs = cust_with(|y| y.replace("relate: { type: placed_by,", "relate: { type: knows,"));
    let evs = events(
        &defs,
        "billing",
        &[
            json!({"event": "order.created", "created_at": iso("01-03"), "id": "o1", "customer_email": "alice@x.com", "amount": 5}),
        ],
    );
    let r = replay_with(&defs, "order", &evs, "01-04", &OneCustomer);
    assert_eq!(r.history.rows.len(), 1);
    assert_eq!(r.relationships.all().count(), 0);
    assert!(r.failures.is_empty());
}

#[test]
fn a_merge_loser_ends_at_the_merge_with_its_tombstone() {
    let defs = cust();
    let evs = events(
        &defs,
        "app",
        &[app("signup", "01-02 10:00", json!({"phone": "555"}))],
    );
    let job = EntityJob {
        entity_type: "customer".into(),
        entity_id: "P5".into(),
        events: evs.iter().collect(),
        merged_into: Some(("Ea".into(), t("01-03 10:00"))),
    };
    let r = replay_entity(&defs, &job, t("06-01"), &NoRelations);
    assert_eq!(r.history.rows.len(), 1, "rules stop at the merge");
    let row = &r.history.rows[0];
    assert_eq!(row.valid_to, Some(t("01-03 10:00")));
    assert_eq!(row.merged_into.as_deref(), Some("Ea"));
    assert!(r.slot.entity.is_none());
}
