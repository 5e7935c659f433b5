//! `defacto erase` through the command line (CONTRACTS group I; PIPELINE.md §12.1): the
//! cascade, the counts, and the erasure guarantee checked by reading every byte under the lake
//! (Parquet decoded, logs as text) and the catalog database.

mod harness;

use std::path::Path;

use harness::{app, run, s1, Backend, Dir, TestCommand};
use serde_json::{json, Value as Json};

fn text(dir: &Dir, args: &[&str]) -> String {
    let out = TestCommand::new(dir).args(args).run();
    out.assert_code(0);
    out.stdout
}

fn ingest(dir: &Dir, name: &str, records: &[String]) {
    harness::ingest_app(dir, name, records);
    run(dir, &["normalize"]);
}

const A: &str = "977754ef-7546-8aa8-a601-f6954a4aa7e2";
const B: &str = "80fc7c39-d549-8b90-91b3-784d1b828f70";

/// S1 (alice: signup, upgrade, login) plus bob's signup, built.
fn i1(backend: Backend) -> Dir {
    let dir = Dir::from_fixture("cust").on(backend);
    ingest(
        &dir,
        "s1.jsonl",
        &[
            s1(),
            vec![app("signup", "01-05T10:00", json!({"email": "bob@x.com"}))],
        ]
        .concat(),
    );
    run(&dir, &["build", "--as-of", "2024-01-06T00:00:00Z"]);
    dir
}

fn ids(rows: &Json, column: &str) -> Vec<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r[column].as_str().unwrap().to_string())
        .collect()
}

/// Every file under `root`: Parquet files decoded to text (data files and checkpoints) plus
/// their raw bytes (footer statistics), everything else as raw bytes.
fn every_byte(root: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        out.push_str(&String::from_utf8_lossy(&bytes));
        if p.extension().is_some_and(|e| e == "parquet") {
            let reader =
                deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                    std::fs::File::open(&p).unwrap(),
                )
                .unwrap()
                .build()
                .unwrap();
            let batches: Vec<_> = reader.map(Result::unwrap).collect();
            out.push_str(
                &deltalake::arrow::util::pretty::pretty_format_batches(&batches)
                    .unwrap()
                    .to_string(),
            );
        }
    }
    out
}

// CONTRACTS I1, CONTRACTS I9
#[test]
fn erase_removes_every_trace() {
    let dir = i1(Backend::Sqlite);
    let csv_out = dir.path().join("exported");
    run(&dir, &["export", "--format", "warehouse"]);
    run(
        &dir,
        &[
            "export",
            "--format",
            "csv",
            "--out",
            csv_out.to_str().unwrap(),
        ],
    );
    let lake = dir.path().join(".defacto/lake");
    let before = every_byte(&lake).to_lowercase();
    assert!(
        before.contains("alice@x.com") && before.contains(A),
        "the scan sees the data"
    );

    let r = run(&dir, &["erase", A]);
    assert_eq!(
        r,
        json!({"entity_id": A, "entities_erased": 1, "events_deleted": 3, "merge_log_cleaned": 0,
               "raw_records_deleted": 0, "export_targets": [csv_out.to_str().unwrap()]})
    );
    assert_eq!(
        run(
            &dir,
            &["identity", "lookup", "alice@x.com", "--format", "json"]
        ),
        json!({"entity_id": null})
    );
    assert_eq!(
        run(&dir, &["ledger", "count", "--format", "json"]),
        json!({"count": 1})
    );
    assert!(!text(
        &dir,
        &["table", "customer", "--history", "--format", "json"]
    )
    .contains(A));
    assert_eq!(
        ids(
            &run(&dir, &["table", "customer", "--format", "json"]),
            "customer_id"
        ),
        vec![B]
    );

    let after = every_byte(&lake);
    let lower = after.to_lowercase();
    assert!(
        !lower.contains("alice@x.com"),
        "an erased hint value is still in the lake"
    );
    assert!(!after.contains(A), "the erased id is still in the lake");
    assert!(after.contains("bob@x.com"), "other entities' rows stay");
    let db = std::fs::read(dir.path().join(".defacto/defacto.db")).unwrap();
    let db = String::from_utf8_lossy(&db).to_lowercase();
    assert!(
        !db.contains("alice@x.com") && !db.contains(A),
        "the catalog database (warehouse and run log included) still holds erased data"
    );
    assert!(db.contains("bob@x.com"));

    // Time travel to before the erase is gone.
    let events = format!("{}/ledger/events", lake.display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let old = rt.block_on(async {
        let url = deltalake::ensure_table_uri(&events).unwrap();
        deltalake::open_table_with_version(url, 0).await
    });
    assert!(old.is_err(), "version 0 of ledger/events is still readable");

    // CONTRACTS I4: a full build brings nothing back; a new signup starts fresh.
    run(
        &dir,
        &["build", "--full", "--as-of", "2024-01-06T00:00:00Z"],
    );
    assert!(!text(
        &dir,
        &["table", "customer", "--history", "--format", "json"]
    )
    .contains(A));
    ingest(
        &dir,
        "again.jsonl",
        &[app(
            "signup",
            "06-01T10:00",
            json!({"email": "Alice@X.com"}),
        )],
    );
    run(&dir, &["build", "--as-of", "2024-06-02T00:00:00Z"]);
    let history = run(
        &dir,
        &["table", "customer", "--history", "--format", "json"],
    );
    let a: Vec<&Json> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["customer_id"] == A)
        .collect();
    assert_eq!(a.len(), 1, "one fresh row: {history:#}");
    assert_eq!(a[0]["valid_from"], "2024-06-01T10:00:00Z");
}

/// D10: bob, then alice who upgrades; alice merged into bob.
fn d10(backend: Backend) -> Dir {
    let dir = Dir::from_fixture("cust").on(backend);
    ingest(
        &dir,
        "d10.jsonl",
        &[
            app("signup", "01-01T10:00", json!({"email": "bob@x.com"})),
            app("signup", "01-15T10:00", json!({"email": "alice@x.com"})),
            app(
                "upgrade",
                "01-15T10:01",
                json!({"email": "alice@x.com", "plan": "pro", "mrr": 10}),
            ),
        ],
    );
    run(&dir, &["build", "--as-of", "2024-01-16T00:00:00Z"]);
    run(&dir, &["merge", A, B, "--as-of", "2024-02-01T00:00:00Z"]);
    dir
}

// CONTRACTS I2
fn erase_cascades_from_the_winner_not_from_the_loser(backend: Backend) {
    let dir = d10(backend);
    let r = run(&dir, &["erase", B]);
    assert_eq!(
        (r["entities_erased"].as_u64(), r["events_deleted"].as_u64()),
        (Some(2), Some(4)),
        "{r}"
    );
    assert_eq!(r["merge_log_cleaned"].as_u64(), Some(1));
    assert_eq!(
        run(
            &dir,
            &["table", "customer", "--history", "--format", "json"]
        ),
        json!([])
    );
    assert_eq!(
        run(&dir, &["identity", "list", "--format", "json"]),
        json!([])
    );
    assert_eq!(
        run(&dir, &["ledger", "count", "--format", "json"]),
        json!({"count": 0})
    );

    let dir = d10(backend);
    let r = run(&dir, &["erase", A]);
    assert_eq!(
        (r["entities_erased"].as_u64(), r["events_deleted"].as_u64()),
        (Some(1), Some(0)),
        "{r}"
    );
    let current = run(&dir, &["table", "customer", "--format", "json"]);
    assert_eq!(ids(&current, "customer_id"), vec![B]);
    assert_eq!(current[0]["plan"], "pro");
    assert!(!text(
        &dir,
        &["table", "customer", "--history", "--format", "json"]
    )
    .contains(A));
}

#[test]
fn erase_cascades_sqlite() {
    erase_cascades_from_the_winner_not_from_the_loser(Backend::Sqlite)
}

#[test]
fn erase_cascades_postgres() {
    erase_cascades_from_the_winner_not_from_the_loser(Backend::Postgres)
}

// CONTRACTS I11
#[test]
fn erase_reaches_raw_input_that_never_normalized() {
    let dir = i1(Backend::Sqlite);
    harness::ingest_app(
        &dir,
        "bad.jsonl",
        &[app(
            "log_in",
            "01-04T10:00",
            json!({"email": "ALICE@X.COM", "n": 2}),
        )],
    );
    run(&dir, &["normalize"]);
    let r = run(&dir, &["erase", A]);
    assert_eq!(r["raw_records_deleted"].as_u64(), Some(1), "{r}");
    let lake = every_byte(&dir.path().join(".defacto/lake")).to_lowercase();
    assert!(
        !lake.contains("alice@x.com"),
        "the failed record or its dead letter survived"
    );
}

// CONTRACTS I5 (the product answers an unknown id with NotFoundError, exit 1, and changes nothing)
#[test]
fn erase_of_an_unknown_id_changes_nothing() {
    let dir = i1(Backend::Sqlite);
    let before = text(
        &dir,
        &["table", "customer", "--history", "--format", "json"],
    );
    let out = TestCommand::new(&dir).args(["erase", "nope"]).run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("NotFoundError: Unknown entity 'nope'"),
        "{}",
        out.stderr
    );
    assert_eq!(
        text(
            &dir,
            &["table", "customer", "--history", "--format", "json"]
        ),
        before
    );
    assert_eq!(
        run(&dir, &["ledger", "count", "--format", "json"]),
        json!({"count": 4})
    );
}

/// An erase that dies at each step (DEFACTO_CRASH_AT aborts the process there), then runs
/// again, completes: the same result, nothing of the entity left, the others intact.
#[test]
fn an_interrupted_erase_completes_when_run_again() {
    for point in [
        "erase-after-plan",
        "erase-after-assignments",
        "erase-after-ledger",
        "erase-after-history",
        "erase-after-catalog",
        "erase-during-purge",
    ] {
        let dir = i1(Backend::Sqlite);
        run(&dir, &["export", "--format", "warehouse"]);
        let crashed = TestCommand::new(&dir)
            .env("DEFACTO_CRASH_AT", point)
            .args(["erase", A])
            .run();
        assert_ne!(crashed.code, 0, "{point}: the crash hook did not fire");
        let r = run(&dir, &["erase", A]);
        assert_eq!(
            (r["entities_erased"].as_u64(), r["events_deleted"].as_u64()),
            (Some(1), Some(3)),
            "{point}: {r}"
        );
        let lake = every_byte(&dir.path().join(".defacto/lake"));
        assert!(
            !lake.to_lowercase().contains("alice@x.com") && !lake.contains(A),
            "{point}: erased data survived in the lake"
        );
        let db = std::fs::read(dir.path().join(".defacto/defacto.db")).unwrap();
        let db = String::from_utf8_lossy(&db).to_lowercase();
        assert!(
            !db.contains("alice@x.com") && !db.contains(A),
            "{point}: erased data survived in the catalog"
        );
        assert_eq!(
            ids(
                &run(&dir, &["table", "customer", "--format", "json"]),
                "customer_id"
            ),
            vec![B],
            "{point}"
        );
        assert_eq!(
            run(&dir, &["ledger", "count", "--format", "json"]),
            json!({"count": 1}),
            "{point}"
        );
    }
}

// CONTRACTS I3: an event shared with another entity stays, with the erased values nulled.
#[test]
fn shared_events_survive_scrubbed() {
    let dir = i1(Backend::Sqlite);
    let order = json!({"event": "order.created", "created_at": "2024-01-03T11:00:00Z", "id": "o1",
                       "customer_email": "Alice@X.com", "amount": 50});
    dir.write("bill.jsonl", &format!("{order}\n"));
    run(&dir, &["ingest", "--source", "billing", "bill.jsonl"]);
    run(&dir, &["normalize"]);
    run(&dir, &["build", "--as-of", "2024-01-06T00:00:00Z"]);
    let placed = run(
        &dir,
        &[
            "query",
            "SELECT target_id FROM rel_placed_by",
            "--format",
            "json",
        ],
    );
    assert_eq!(placed, json!([{"target_id": A}]));

    let r = run(&dir, &["erase", A]);
    assert_eq!(r["events_deleted"], 3, "{r}");
    let orders = run(&dir, &["table", "order", "--format", "json"]);
    assert_eq!(
        orders.as_array().unwrap().len(),
        1,
        "the order stays current"
    );
    assert_eq!(
        run(
            &dir,
            &[
                "query",
                "SELECT * FROM rel_placed_by_history",
                "--format",
                "json"
            ]
        ),
        json!([])
    );
    assert_eq!(
        run(&dir, &["ledger", "count", "--format", "json"]),
        json!({"count": 2}),
        "bob's signup and the order"
    );
    let lake = every_byte(&dir.path().join(".defacto/lake")).to_lowercase();
    assert!(
        !lake.contains("alice@x.com"),
        "the shared row still holds the erased email"
    );
    assert!(lake.contains("o1"), "the order's own values stay");

    // Renormalized from raw, the order brings no customer back.
    run(
        &dir,
        &["build", "--from-raw", "--as-of", "2024-01-06T00:00:00Z"],
    );
    let customers = run(
        &dir,
        &["table", "customer", "--history", "--format", "json"],
    );
    assert_eq!(ids(&customers, "customer_id"), vec![B], "{customers:#}");
    assert_eq!(
        run(&dir, &["table", "order", "--format", "json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

// CONTRACTS F11: erased entities are not ticked. Built while still active (so a tick to 12-31
// would fire both rules, as the untouched twin shows), then erased: the tick finds nothing.
#[test]
fn erased_entities_are_not_ticked() {
    let signup = || {
        let dir = Dir::from_fixture("cust");
        ingest(
            &dir,
            "s2.jsonl",
            &[app("signup", "01-01T00:00", json!({"email": "a@x.com"}))],
        );
        run(&dir, &["build", "--as-of", "2024-01-02T00:00:00Z"]);
        dir
    };
    let counts = |tick: &Json| {
        ["effects_produced", "entities_affected", "transitions"].map(|k| tick[k].as_u64().unwrap())
    };
    let twin = signup();
    let tick = run(&twin, &["tick", "--as-of", "2024-12-31T00:00:00Z"]);
    assert_eq!(counts(&tick), [2, 1, 2], "{tick}");

    let dir = signup();
    let rows = run(&dir, &["table", "customer", "--format", "json"]);
    let id = ids(&rows, "customer_id").remove(0);
    let erased = run(&dir, &["erase", &id]);
    assert_eq!(erased["entities_erased"], 1);
    let tick = run(&dir, &["tick", "--as-of", "2024-12-31T00:00:00Z"]);
    assert_eq!(counts(&tick), [0, 0, 0], "{tick}");
    let rows = run(
        &dir,
        &["table", "customer", "--history", "--format", "json"],
    );
    assert_eq!(rows, json!([]));
}
