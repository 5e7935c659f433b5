//! `defacto redact` through the command line (CONTRACTS I6–I8; PIPELINE.md §12.2): the ledger
//! rows are rewritten, only keys that exist, and the history shows the redacted values —
//! also after a full rebuild.

mod harness;

use defacto_jobs::lake::{tables, Lake};
use defacto_jobs::ledger::{Columns, EVENTS_SCHEMA, RAW_SCHEMA};
use harness::{app, run, Dir, TestCommand};
use serde_json::{json, Value as Json};

const A: &str = "977754ef-7546-8aa8-a601-f6954a4aa7e2";

/// S1 built, in a copy of the `cust` fixture changed by `edit`.
fn s1(edit: impl Fn(&Dir)) -> Dir {
    let dir = Dir::from_fixture("cust");
    edit(&dir);
    let records = harness::s1();
    dir.write("s1.jsonl", &(records.join("\n") + "\n"));
    run(&dir, &["ingest", "--source", "app", "s1.jsonl"]);
    run(&dir, &["normalize"]);
    run(&dir, &["build", "--as-of", "2024-01-04T00:00:00Z"]);
    dir
}

/// The JSON column of every row of a ledger table, by sequence.
fn ledger_json(dir: &Dir, table: &str, column: &str) -> Vec<Json> {
    ledger_text(dir, table, column)
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect()
}

/// A text column of every row of a ledger table, by sequence.
fn ledger_text(dir: &Dir, table: &str, column: &str) -> Vec<String> {
    let lake = Lake::new(&dir.path().join(".defacto/lake").display().to_string()).unwrap();
    let schema = if table == tables::RAW {
        RAW_SCHEMA.clone()
    } else {
        EVENTS_SCHEMA.clone()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let batches = rt
        .block_on(lake.query_all(
            &[("t", table, schema.clone())],
            "SELECT * FROM t ORDER BY sequence",
        ))
        .unwrap();
    let mut out = Vec::new();
    for b in &batches {
        let b = defacto_jobs::lake::conform(b, &schema).unwrap();
        let c = Columns::new(&b);
        let text = c.str(column).unwrap();
        out.extend((0..b.num_rows()).map(|i| text.value(i).to_string()));
    }
    out
}

fn history(dir: &Dir) -> Json {
    run(dir, &["table", "customer", "--history", "--format", "json"])
}

// CONTRACTS I6, CONTRACTS I7
#[test]
fn redact_rewrites_the_ledger_and_the_history() {
    // `plan` sensitive too: the signup row, which has no plan, gains no key.
    let dir = s1(|d| {
        d.edit(
            "entities/customer.yaml",
            "plan:   { type: string, default: free }",
            "plan:   { type: string, default: free, sensitive: pii }",
        )
    });
    let r = run(&dir, &["redact", A, "--as-of", "2024-01-04T00:00:00Z"]);
    assert_eq!(
        (r["rows_redacted"].as_u64(), r["rebuilt"].as_bool()),
        (Some(3), Some(true)),
        "{r}"
    );
    let data = ledger_json(&dir, tables::EVENTS, "data");
    let raw = ledger_json(&dir, tables::RAW, "raw");
    assert_eq!(data.len(), 3);
    for (d, r) in data.iter().zip(&raw) {
        assert_eq!(
            (&d["email"], &r["email"]),
            (&json!("[REDACTED]"), &json!("[REDACTED]"))
        );
    }
    assert!(
        data[0].get("plan").is_none() && raw[0].get("plan").is_none(),
        "no key is added: {}",
        data[0]
    );
    assert_eq!(data[1]["plan"], "[REDACTED]");
    assert_eq!(
        run(
            &dir,
            &["identity", "lookup", "alice@x.com", "--format", "json"]
        ),
        json!({"entity_id": A})
    );

    let rows = history(&dir);
    let text = rows.to_string();
    assert!(!text.to_lowercase().contains("alice@x.com"), "{rows:#}");
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["email"] == "[REDACTED]"),
        "{rows:#}"
    );

    // Durable: a full rebuild replays the redacted ledger.
    run(
        &dir,
        &["build", "--full", "--as-of", "2024-01-04T00:00:00Z"],
    );
    assert_eq!(history(&dir), rows);
    // Idempotent: nothing left to redact.
    let again = run(&dir, &["redact", A, "--as-of", "2024-01-04T00:00:00Z"]);
    assert_eq!(again["rows_redacted"].as_u64(), Some(0));
}

#[test]
fn treatments_mask_and_hash() {
    let dir = s1(|d| {
        d.edit(
            "entities/customer.yaml",
            "sensitive: pii }",
            "sensitive: pii, treatment: mask }",
        )
    });
    run(&dir, &["redact", A]);
    let current = run(&dir, &["table", "customer", "--format", "json"]);
    assert_eq!(
        current[0]["email"], "A***@X.com",
        "the signup's value, masked"
    );

    let dir = s1(|d| {
        d.edit(
            "entities/customer.yaml",
            "sensitive: pii }",
            "sensitive: pii, treatment: hash }",
        )
    });
    run(&dir, &["redact", A]);
    let current = run(&dir, &["table", "customer", "--format", "json"]);
    let email = current[0]["email"].as_str().unwrap();
    assert!(email.starts_with("sha256:") && email.len() == 71, "{email}");
}

// CONTRACTS I8
#[test]
fn redact_without_anything_to_redact_is_zero() {
    let dir = s1(|_| {});
    let before = history(&dir);
    assert_eq!(
        run(&dir, &["redact", "nope"])["rows_redacted"].as_u64(),
        Some(0)
    );
    let dir2 = s1(|d| {
        d.edit(
            "entities/customer.yaml",
            "email:  { type: string, sensitive: pii }",
            "email:  { type: string }",
        )
    });
    assert_eq!(
        run(&dir2, &["redact", A])["rows_redacted"].as_u64(),
        Some(0)
    );
    assert_eq!(history(&dir), before);
}

// CONTRACTS I10
#[test]
fn redacted_rows_survive_renormalization() {
    let dir = Dir::from_fixture("cust");
    let records = [
        app("signup", "01-01T10:00", json!({"email": "a@x.com"})),
        app("signup", "01-02T10:00", json!({"email": "b@x.com"})),
    ];
    dir.write("e.jsonl", &(records.join("\n") + "\n"));
    run(&dir, &["ingest", "--source", "app", "e.jsonl"]);
    run(&dir, &["normalize"]);
    run(&dir, &["build", "--as-of", "2024-01-03T00:00:00Z"]);
    let ids: Vec<String> = run(&dir, &["table", "customer", "--format", "json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["customer_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    let event_ids = ledger_text(&dir, tables::EVENTS, "event_id");
    for id in &ids {
        let r = run(&dir, &["redact", id, "--as-of", "2024-01-03T00:00:00Z"]);
        assert_eq!(r["rows_redacted"].as_u64(), Some(1));
    }
    let r = run(
        &dir,
        &["build", "--from-raw", "--as-of", "2024-01-03T00:00:00Z"],
    );
    assert_eq!(r["mode"], "FULL_RENORMALIZE", "{r}");
    assert_eq!(
        ledger_text(&dir, tables::EVENTS, "event_id"),
        event_ids,
        "event ids are kept"
    );
    let hints = ledger_json(&dir, tables::EVENTS, "resolution_hints");
    assert_eq!(
        hints,
        vec![
            json!({"customer": {"email": "a@x.com"}}),
            json!({"customer": {"email": "b@x.com"}})
        ]
    );
    let data = ledger_json(&dir, tables::EVENTS, "data");
    assert!(data.iter().all(|d| d["email"] == "[REDACTED]"), "{data:?}");
    let current = run(&dir, &["table", "customer", "--format", "json"]);
    let mut after: Vec<String> = current
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["customer_id"].as_str().unwrap().to_string())
        .collect();
    after.sort();
    let mut before = ids.clone();
    before.sort();
    assert_eq!(
        after, before,
        "two customers, not one merged '[redacted]' customer"
    );
    assert!(current
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["email"] == "[REDACTED]"));
}

/// A redact that dies at each step, then runs again, leaves the ledger and the history
/// redacted, as one uninterrupted run does.
#[test]
fn an_interrupted_redact_completes_when_run_again() {
    let expected = {
        let dir = s1(|_| {});
        run(&dir, &["redact", A, "--as-of", "2024-01-04T00:00:00Z"]);
        history(&dir)
    };
    for point in [
        "redact-after-kept",
        "redact-after-events",
        "redact-after-raw",
        "redact-before-request",
    ] {
        let dir = s1(|_| {});
        let crashed = TestCommand::new(&dir)
            .env("DEFACTO_CRASH_AT", point)
            .args(["redact", A, "--as-of", "2024-01-04T00:00:00Z"])
            .run();
        assert_ne!(crashed.code, 0, "{point}: the crash hook did not fire");
        run(&dir, &["redact", A, "--as-of", "2024-01-04T00:00:00Z"]);
        assert_eq!(history(&dir), expected, "{point}");
        let data = ledger_json(&dir, tables::EVENTS, "data");
        let raw = ledger_json(&dir, tables::RAW, "raw");
        assert!(
            data.iter().chain(&raw).all(|j| j["email"] == "[REDACTED]"),
            "{point}"
        );
    }
}

// CONTRACTS H15: the read commands build nothing; `redact` first builds the pending login (at
// its own as_of, under its leases) and redacts that row too.
#[test]
fn pending_events_and_the_other_commands() {
    let dir = s1(|_| {});
    // n = 2: a login like S1's but for its time would be a duplicate (PIPELINE.md §2.6).
    harness::ingest_app(
        &dir,
        "login.jsonl",
        &[app(
            "login",
            "01-05T10:00",
            json!({"email": "alice@x.com", "n": 2}),
        )],
    );
    run(&dir, &["normalize"]);
    let pending = |dir: &Dir| run(dir, &["status"])["pending_events"].as_i64();
    assert_eq!(pending(&dir), Some(1));

    let current = run(&dir, &["table", "customer", "--format", "json"]);
    assert_eq!(current[0]["logins"], 1, "{current}");
    let timeline = run(&dir, &["timeline", A]);
    assert_eq!(
        timeline["entries"].as_array().map(Vec::len),
        Some(3),
        "{timeline}"
    );
    TestCommand::new(&dir)
        .args(["assert", A, "logins=1"])
        .run()
        .assert_code(0);
    run(&dir, &["identity", "hints", A, "--format", "json"]);
    let count = TestCommand::new(&dir)
        .args(["ledger", "count", "--format", "csv"])
        .run();
    count.assert_code(0);
    assert_eq!(count.stdout.trim(), "count\n4");
    assert_eq!(pending(&dir), Some(1));

    let r = run(&dir, &["redact", A, "--as-of", "2024-01-05T12:00:00Z"]);
    assert_eq!(r["rows_redacted"], 4, "{r}");
    assert_eq!(pending(&dir), Some(0));
    let current = run(&dir, &["table", "customer", "--format", "json"]);
    assert_eq!(
        (&current[0]["logins"], &current[0]["email"]),
        (&json!(2), &json!("[REDACTED]")),
        "{current}"
    );
}
