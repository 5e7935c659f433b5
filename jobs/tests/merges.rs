//! `defacto merge` through the command line (CONTRACTS D10–D12, D16, D17; PIPELINE.md §11.2).

mod harness;

use harness::{run, Dir, TestCommand};
use serde_json::Value as Json;

const A: &str = "977754ef-7546-8aa8-a601-f6954a4aa7e2";
const B: &str = "80fc7c39-d549-8b90-91b3-784d1b828f70";
const MERGE_AT: &str = "--as-of=2024-02-01T00:00:00Z";

/// D10's setup: bob, then alice who upgrades; built.
fn d10() -> Dir {
    let dir = Dir::from_fixture("cust");
    dir.write(
        "e.jsonl",
        "{\"type\":\"signup\",\"ts\":\"2024-01-01T10:00:00Z\",\"email\":\"bob@x.com\"}\n\
         {\"type\":\"signup\",\"ts\":\"2024-01-15T10:00:00Z\",\"email\":\"alice@x.com\"}\n\
         {\"type\":\"upgrade\",\"ts\":\"2024-01-15T10:01:00Z\",\"email\":\"alice@x.com\",\"plan\":\"pro\",\"mrr\":10}\n",
    );
    run(&dir, &["ingest", "--source", "app", "e.jsonl"]);
    run(&dir, &["normalize"]);
    run(&dir, &["build", "--as-of", "2024-01-16T00:00:00Z"]);
    dir
}

fn history(dir: &Dir) -> Vec<Json> {
    run(dir, &["table", "customer", "--history", "--format", "json"])
        .as_array()
        .unwrap()
        .clone()
}

fn assert_d10(dir: &Dir) {
    let rows = history(dir);
    let b: Vec<&Json> = rows.iter().filter(|r| r["customer_id"] == B).collect();
    assert_eq!(b.len(), 2, "{rows:#?}");
    assert_eq!(
        (b[0]["plan"].as_str(), b[0]["valid_to"].as_str()),
        (Some("free"), Some("2024-01-15T10:01:00Z"))
    );
    assert_eq!(
        (
            b[1]["plan"].as_str(),
            b[1]["mrr"].as_f64(),
            b[1]["annual"].as_f64()
        ),
        (Some("pro"), Some(10.0), Some(120.0))
    );
    assert!(b[1].get("valid_to").is_none_or(Json::is_null));
    let a_last = rows.iter().rfind(|r| r["customer_id"] == A).unwrap();
    assert_eq!(
        (a_last["valid_to"].as_str(), a_last["merged_into"].as_str()),
        (Some("2024-02-01T00:00:00Z"), Some(B))
    );
    let current = run(dir, &["table", "customer", "--format", "json"]);
    assert_eq!(current.as_array().unwrap().len(), 1);
    assert_eq!(current[0]["customer_id"], B);
}

// CONTRACTS D10, CONTRACTS H12
#[test]
fn an_explicit_merge_rebuilds_the_winner() {
    let dir = d10();
    let r = run(&dir, &["merge", A, B, "--reason", "same person", MERGE_AT]);
    assert_eq!(
        (
            r["events_reassigned"].as_u64(),
            r["entities_rebuilt"].as_u64(),
            r["tombstones_produced"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(r["duplicate"], false);
    assert_d10(&dir);
    assert_eq!(
        run(
            &dir,
            &["ledger", "count", "--source", "_defacto", "--format", "json"]
        )["count"],
        1
    );
    assert_eq!(
        run(&dir, &["ledger", "count", "--format", "json"])["count"],
        4
    );
    assert_eq!(run(&dir, &["status"])["pending_events"], 0);
    let full = run(&dir, &["build", "--full", MERGE_AT]);
    assert_eq!(
        full["events_processed"], 4,
        "system events count as processed (H12): {full}"
    );
    assert_d10(&dir);
}

// CONTRACTS D11, CONTRACTS D16
#[test]
fn repeated_and_refused_merges() {
    let dir = d10();
    let out = TestCommand::new(&dir)
        .args(["merge", A, "nope", MERGE_AT])
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("NotFoundError")
            && out.stderr.contains("Surviving entity 'nope' not found"),
        "{}",
        out.stderr
    );
    run(&dir, &["merge", A, B, MERGE_AT]);
    let again = run(&dir, &["merge", A, B, MERGE_AT]);
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["events_reassigned"], 0);
    assert_eq!(
        run(&dir, &["ledger", "count", "--format", "json"])["count"],
        4
    );
    let later = run(&dir, &["merge", A, B, "--as-of", "2024-02-02T00:00:00Z"]);
    assert_eq!(later["duplicate"], false);
    assert_eq!(
        run(&dir, &["ledger", "count", "--format", "json"])["count"],
        5
    );
    assert_d10(&dir);
}

// CONTRACTS D12: the merge survives a FULL build and an identity reset.
#[test]
fn merges_survive_rebuilds_and_identity_resets() {
    let dir = d10();
    run(&dir, &["merge", A, B, MERGE_AT]);
    let before = history(&dir);
    assert_eq!(run(&dir, &["build", "--full", MERGE_AT])["mode"], "FULL");
    assert_eq!(history(&dir), before);
    dir.edit(
        "entities/customer.yaml",
        "normalize: \"str::to_lowercase(value)\"",
        "normalize: \"str::trim(str::to_lowercase(value))\"",
    );
    assert_eq!(
        run(&dir, &["build", MERGE_AT])["mode"],
        "FULL_WITH_IDENTITY_RESET"
    );
    assert_d10(&dir);
}

// CONTRACTS D17
#[test]
fn invalid_merges_change_nothing() {
    let dir = d10();
    run(&dir, &["merge", A, B, MERGE_AT]);
    dir.write(
        "o.jsonl",
        "{\"event\":\"order.created\",\"created_at\":\"2024-01-20T00:00:00Z\",\"id\":\"o1\",\"customer_email\":\"bob@x.com\",\"amount\":5}\n",
    );
    run(&dir, &["ingest", "--source", "billing", "o.jsonl"]);
    run(&dir, &["normalize"]);
    run(&dir, &["build", MERGE_AT]);
    let o1 = "50006e3c-7bc3-8e62-a58c-03beb31500c0";
    let before = history(&dir);
    let out = TestCommand::new(&dir).args(["merge", B, B, MERGE_AT]).run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("IdentityError") && out.stderr.contains("into itself"),
        "{}",
        out.stderr
    );
    for (from, into) in [(o1, B), (B, o1)] {
        let out = TestCommand::new(&dir)
            .args(["merge", from, into, "--as-of", "2024-02-03T00:00:00Z"])
            .run();
        out.assert_code(1);
        assert!(out.stderr.contains("Cannot merge"), "{}", out.stderr);
    }
    assert_eq!(
        run(&dir, &["ledger", "count", "--format", "json"])["count"],
        5
    );
    assert_eq!(history(&dir), before);
}
