//! The checks of `assert_entity` / `defacto assert` (RESULTS.md §10) on a current row.

use defacto_core::assertion::{check, Column, Expectation, Found};
use serde_json::{json, Map, Value as Json};

const A: &str = "977754ef-7546-8aa8-a601-f6954a4aa7e2";

fn columns() -> Vec<Column> {
    [
        "customer_id",
        "customer_state",
        "plan",
        "mrr",
        "logins",
        "valid_from",
    ]
    .iter()
    .map(|name| Column {
        name: name.to_string(),
        datetime: *name == "valid_from",
    })
    .collect()
}

/// S1's current row of A (as Arrow JSON writes it: the null `score` is absent).
fn row() -> Map<String, Json> {
    json!({"customer_id": A, "customer_state": "active", "plan": "pro", "mrr": 49.0,
           "logins": 1, "valid_from": "2024-01-03T10:00:00"})
    .as_object()
    .unwrap()
    .clone()
}

fn args(args: &[&str]) -> Vec<Expectation> {
    args.iter()
        .map(|a| Expectation::parse(a).unwrap())
        .collect()
}

fn run(expectations: &[&str]) -> Result<(), String> {
    let (columns, row) = (columns(), row());
    let found = Found {
        entity_type: "customer",
        type_has_rows: true,
        row: Some(&row),
        columns: &columns,
        state_column: "customer_state",
    };
    check(A, Some(&found), &args(expectations)).map_err(|f| f.to_string())
}

// CONTRACTS K9 (the parsing of KEY=VALUE)
#[test]
fn values_are_json_scalars_or_plain_strings() {
    let parsed = |a: &str| Expectation::parse(a).unwrap();
    assert_eq!(
        parsed("mrr=49"),
        Expectation::Property("mrr".into(), json!(49))
    );
    assert_eq!(
        parsed("mrr=\"49\""),
        Expectation::Property("mrr".into(), json!("49"))
    );
    assert_eq!(
        parsed("plan=pro"),
        Expectation::Property("plan".into(), json!("pro"))
    );
    assert_eq!(
        parsed("x=[1]"),
        Expectation::Property("x".into(), json!("[1]"))
    );
    assert_eq!(
        parsed("plan=null"),
        Expectation::Property("plan".into(), Json::Null)
    );
    assert_eq!(
        parsed("e=a=b"),
        Expectation::Property("e".into(), json!("a=b"))
    );
    assert_eq!(parsed("state=active"), Expectation::State("active".into()));
    assert!(Expectation::parse("plan").is_err());
    assert!(Expectation::parse("=x").is_err());
}

// CONTRACTS K5, CONTRACTS K9
#[test]
fn checks_pass_and_fail_with_the_first_failing_message_and_a_diff() {
    assert_eq!(
        run(&["state=active", "plan=pro", "mrr=49", "logins=1"]),
        Ok(())
    );
    assert_eq!(
        run(&["valid_from=2024-01-03T10:00:00Z"]),
        Ok(()),
        "instants compare as instants"
    );
    assert_eq!(
        run(&["state=churned"]).unwrap_err(),
        format!("customer {A} expected state 'churned', got 'active'\n- state: \"churned\"\n+ state: \"active\"")
    );
    assert_eq!(
        run(&["plan=pro", "mrr=\"49\""]).unwrap_err(),
        format!("customer {A} mrr: expected \"49\", got 49.0\n  plan: \"pro\"\n- mrr: \"49\"\n+ mrr: 49.0")
    );
    assert_eq!(
        run(&["plan=null"]).unwrap_err(),
        format!("customer {A} plan: expected null, got \"pro\"\n- plan: null\n+ plan: \"pro\"")
    );
    let missing = run(&["nope=1", "plan=free"]).unwrap_err();
    assert!(
        missing.starts_with(&format!(
            "customer {A} property 'nope' not found in columns [customer_id, customer_state, logins, mrr, plan, valid_from]\n"
        )),
        "{missing}"
    );
    assert!(
        missing
            .ends_with("- nope: 1\n+ nope: (no such property)\n- plan: \"free\"\n+ plan: \"pro\""),
        "{missing}"
    );
}

// CONTRACTS K5 (unknown ids, empty types, entities no longer current)
#[test]
fn unknown_or_absent_entities() {
    assert_eq!(
        check("nope", None, &[]).unwrap_err().to_string(),
        "nope not found in any entity type"
    );
    let columns = columns();
    let mut found = Found {
        entity_type: "customer",
        type_has_rows: false,
        row: None,
        columns: &columns,
        state_column: "customer_state",
    };
    assert_eq!(
        check(A, Some(&found), &[]).unwrap_err().message,
        format!("customer {A} has no rows in current state")
    );
    found.type_has_rows = true;
    let failure = check(A, Some(&found), &args(&["plan=pro"])).unwrap_err();
    assert_eq!(
        failure.message,
        format!("customer {A} not in current state (may have been erased or merged)")
    );
    assert!(failure.diff.is_empty());
}
