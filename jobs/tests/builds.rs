//! Builds through the command line: modes, cursors and watermark, the dirty flag,
//! renormalization, status, leases (CONTRACTS group H), calls and sequences (C17, G4), typed
//! round trips across jobs (G12), per-shard state (J3), build counters and failure shapes (K1,
//! K2, K6), the run log and the next-due index of working state.

mod harness;

use harness::{app, run, s1, Dir, TestCommand};
use serde_json::{json, Value as Json};

/// One `ingest` call of these records, then `normalize`.
fn ingest(dir: &Dir, records: &[String]) -> Json {
    let name = format!(
        "call-{}.jsonl",
        std::process::id() as u128 * 1_000_000 + rand_suffix()
    );
    harness::ingest_app(dir, &name, records);
    run(dir, &["normalize"])
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000
}

fn build(dir: &Dir, as_of: &str) -> Json {
    run(
        dir,
        &["build", "--as-of", &format!("2024-{as_of}T00:00:00Z")],
    )
}

fn current(dir: &Dir, entity: &str) -> Json {
    run(dir, &["table", entity, "--format", "json"])
}

fn history(dir: &Dir, entity: &str) -> Json {
    run(dir, &["table", entity, "--history", "--format", "json"])
}

const A: &str = "977754ef-7546-8aa8-a601-f6954a4aa7e2";

// CONTRACTS H1, CONTRACTS H11
#[test]
fn first_and_repeated_builds_and_status() {
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    let st = run(&dir, &["status"]);
    assert_eq!(
        (
            st["cursor"].as_i64(),
            st["total_events"].as_i64(),
            st["pending_events"].as_i64(),
            st["dirty"].as_bool()
        ),
        (Some(0), Some(3), Some(3), Some(false))
    );
    assert_eq!(
        (&st["last_build_mode"], &st["last_build_time"]),
        (&Json::Null, &Json::Null)
    );
    let b = build(&dir, "01-04");
    assert_eq!(
        (b["mode"].as_str(), b["events_processed"].as_u64()),
        (Some("INCREMENTAL"), Some(3))
    );
    let st = run(&dir, &["status"]);
    assert_eq!(
        (st["cursor"].as_i64(), st["pending_events"].as_i64()),
        (Some(3), Some(0))
    );
    assert_eq!(st["last_build_mode"], "INCREMENTAL");
    assert!(st["last_build_time"].is_string());
    let skip = build(&dir, "01-04");
    assert_eq!(skip["mode"], "SKIP");
    for counter in [
        "events_processed",
        "effects_produced",
        "entities_created",
        "late_arrivals",
        "duration_ms",
    ] {
        assert_eq!(skip[counter], 0, "{counter}");
    }
}

// CONTRACTS H2
#[test]
fn a_skip_runs_no_sweep() {
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    build(&dir, "01-04");
    assert_eq!(build(&dir, "12-31")["mode"], "SKIP");
    assert_eq!(current(&dir, "customer")[0]["customer_state"], "active");
    run(&dir, &["tick", "--as-of", "2024-12-31T00:00:00Z"]);
    assert_eq!(current(&dir, "customer")[0]["customer_state"], "churned");
}

// CONTRACTS H3
#[test]
fn cursor_and_watermark() {
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    build(&dir, "01-04");
    let st = run(&dir, &["status"]);
    assert_eq!(
        (st["cursor"].as_i64(), st["watermark"].as_str()),
        (Some(3), Some("2024-01-03T10:00:00+00:00"))
    );
    ingest(
        &dir,
        &[app(
            "login",
            "01-02T12:00",
            json!({"email": "alice@x.com", "n": 7}),
        )],
    );
    let b = build(&dir, "01-04");
    assert_eq!(b["late_arrivals"], 1, "{b}");
    let st = run(&dir, &["status"]);
    assert_eq!(
        (st["cursor"].as_i64(), st["watermark"].as_str()),
        (Some(4), Some("2024-01-03T10:00:00+00:00"))
    );
}

// CONTRACTS H5
#[test]
fn a_dirty_build_state_runs_full() {
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    build(&dir, "01-04");
    let out = TestCommand::new(&dir)
        .env("DEFACTO_CRASH_AT", "after-history")
        .args(["build", "--full", "--as-of", "2024-01-04T00:00:00Z"])
        .run();
    assert_ne!(out.code, 0);
    run(&dir, &["status"]);
    assert_eq!(
        run(&dir, &["status"])["dirty"],
        true,
        "starting a job does not clear dirty"
    );
    assert_eq!(build(&dir, "01-04")["mode"], "FULL");
    assert_eq!(run(&dir, &["status"])["dirty"], false);
}

// CONTRACTS H6
#[test]
fn a_source_change_renormalizes_and_keeps_ids() {
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    build(&dir, "01-04");
    let before = run(&dir, &["ledger", "events", A, "--format", "json"]);
    dir.edit(
        "sources/app.yaml",
        "signup:  { mappings: { email: { from: email }",
        "signup:  { mappings: { email: { compute: \"str::to_lowercase(event.email)\" }",
    );
    assert_eq!(build(&dir, "01-04")["mode"], "FULL_RENORMALIZE");
    let after = run(&dir, &["ledger", "events", A, "--format", "json"]);
    assert_ne!(
        before[0]["event_id"], after[0]["event_id"],
        "the signup's data and so its id changed"
    );
    assert_eq!(history(&dir, "customer")[0]["email"], "alice@x.com");
    assert_eq!(history(&dir, "customer")[0]["customer_id"], A);
}

// CONTRACTS H8
#[test]
fn records_that_no_longer_normalize_leave_the_replay() {
    let dir = Dir::from_fixture("cust");
    let mut events = s1();
    events.push(app(
        "cancel",
        "01-04T10:00",
        json!({"email": "alice@x.com"}),
    ));
    ingest(&dir, &events);
    build(&dir, "01-05");
    assert_eq!(current(&dir, "customer")[0]["customer_state"], "churned");
    dir.edit(
        "sources/app.yaml",
        "    cancel:  { mappings: { email: { from: email } }, hints: { customer: [email] } }\n",
        "",
    );
    dir.edit(
        "entities/customer.yaml",
        "        cancel:\n          effects:\n            - { transition: { to: churned } }\n",
        "",
    );
    let b = build(&dir, "01-05");
    assert_eq!(b["mode"], "FULL_RENORMALIZE", "{b}");
    let failures = b["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{b}");
    assert!(failures[0]["error"]
        .as_str()
        .unwrap()
        .contains("Unknown event type 'cancel'"));
    assert_eq!(failures[0]["stage"], "normalization");
    assert_eq!(current(&dir, "customer")[0]["customer_state"], "active");
}

// CONTRACTS H10
#[test]
fn a_schema_only_change_is_a_new_version_built_incrementally() {
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    let v1 = build(&dir, "01-04");
    assert_eq!(v1["mode"], "INCREMENTAL");
    let mut schemas = String::new();
    for ev in ["signup", "upgrade", "login", "cancel", "bump", "link"] {
        schemas.push_str(&format!("{ev}: {{fields: {{email: {{type: string}}, phone: {{type: string}}, plan: {{type: string}}, mrr: {{type: number}}, n: {{type: integer}}}}}}\n"));
    }
    schemas.push_str("order_created: {fields: {order_id: {type: string}, email: {type: string}, total: {type: number}}}\norder_shipped: {fields: {order_id: {type: string}}}\n");
    dir.write("schemas/all.yaml", &schemas);
    let b = build(&dir, "01-04");
    assert_eq!(
        (b["mode"].as_str(), b["events_processed"].as_u64()),
        (Some("INCREMENTAL"), Some(3)),
        "{b}"
    );
    assert_eq!(history(&dir, "customer").as_array().unwrap().len(), 3);
    assert_eq!(build(&dir, "01-04")["mode"], "SKIP");
}

// CONTRACTS H14 (normalize and resolve under a held global lease; ingest is not blocked)
#[test]
fn a_held_global_lease_stops_normalize_and_resolve_but_not_ingest() {
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let database = format!(
        "sqlite://{}",
        dir.path().join(".defacto/defacto.db").display()
    );
    rt.block_on(async {
        let catalog = defacto_jobs::catalog::Catalog::connect(&database, "defacto")
            .await
            .unwrap();
        catalog
            .take_lease(
                "global",
                "normalize@elsewhere:1",
                std::time::Duration::from_secs(300),
            )
            .await
            .unwrap();
    });
    harness::ingest_app(
        &dir,
        "more.jsonl",
        &[app(
            "login",
            "01-05T10:00",
            json!({"email": "alice@x.com", "n": 2}),
        )],
    );
    for job in ["normalize", "resolve"] {
        let out = TestCommand::new(&dir).args([job]).run();
        out.assert_code(1);
        assert!(
            out.stderr
                .contains("Lease 'global' is held by normalize@elsewhere:1"),
            "{job}: {}",
            out.stderr
        );
    }
    assert_eq!(
        run(&dir, &["status"])["total_events"],
        3,
        "nothing was normalized"
    );
}

// CONTRACTS H16
#[test]
fn raw_records_that_failed_are_renormalized() {
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    build(&dir, "01-04");
    let n = ingest(
        &dir,
        &[
            app("Cancel", "01-05T10:00", json!({"email": "alice@x.com"})),
            app("nope", "01-06T00:00", json!({})),
        ],
    );
    assert_eq!(n["events_failed"], 2);
    dir.edit(
        "sources/app.yaml",
        "    cancel:  { mappings:",
        "    cancel:  { raw_type: Cancel, mappings:",
    );
    let b = build(&dir, "01-07");
    assert_eq!(b["mode"], "FULL_RENORMALIZE");
    assert_eq!(b["failures"].as_array().unwrap().len(), 1, "{b}");
    assert!(b["failures"][0]["error"]
        .as_str()
        .unwrap()
        .contains("Unknown event type 'nope'"));
    assert_eq!(
        run(&dir, &["ledger", "count", "--format", "json"])["count"],
        4
    );
    let row = &current(&dir, "customer")[0];
    assert_eq!(row["customer_state"], "churned");
    assert_eq!(row["valid_from"], "2024-01-05T10:00:00Z");
}

// CONTRACTS C17
#[test]
fn calls_are_deduplicated_one_after_the_other() {
    let signup = |ts: &str| app("signup", ts, json!({"email": "a@x.com"}));
    let dir = Dir::from_fixture("cust");
    dir.write("first.jsonl", &(signup("01-05T00:00") + "\n"));
    dir.write("second.jsonl", &(signup("01-01T00:00") + "\n"));
    run(&dir, &["ingest", "--source", "app", "first.jsonl"]);
    run(&dir, &["ingest", "--source", "app", "second.jsonl"]);
    let n = run(&dir, &["normalize"]);
    assert_eq!(
        (
            n["events_ingested"].as_u64(),
            n["duplicates_skipped"].as_u64()
        ),
        (Some(1), Some(1))
    );
    build(&dir, "01-10");
    let ea = "fbf2ddb4-0443-8ffd-afe7-93b0897586b9";
    let events = run(&dir, &["ledger", "events", ea, "--format", "json"]);
    assert_eq!(
        (
            events[0]["sequence"].as_i64(),
            events[0]["timestamp"].as_str()
        ),
        (Some(1), Some("2024-01-05T00:00:00+00:00"))
    );

    let dir = Dir::from_fixture("cust");
    dir.write(
        "both.jsonl",
        &format!("{}\n{}\n", signup("01-05T00:00"), signup("01-01T00:00")),
    );
    run(&dir, &["ingest", "--source", "app", "both.jsonl"]);
    run(&dir, &["normalize"]);
    build(&dir, "01-10");
    let events = run(&dir, &["ledger", "events", ea, "--format", "json"]);
    assert_eq!(
        (
            events[0]["sequence"].as_i64(),
            events[0]["timestamp"].as_str()
        ),
        (Some(2), Some("2024-01-01T00:00:00+00:00"))
    );
}

// CONTRACTS G12
#[test]
fn values_keep_their_types_across_jobs() {
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    build(&dir, "01-04");
    ingest(
        &dir,
        &[app(
            "login",
            "01-04T00:00",
            json!({"email": "alice@x.com", "n": 2}),
        )],
    );
    let b = build(&dir, "01-05");
    assert_eq!(b["events_failed"], 0, "{b}");
    let row = &current(&dir, "customer")[0];
    assert_eq!(row["logins"], 2);
    assert_eq!(row["mrr"], 49.0);
}

// CONTRACTS J3
#[test]
fn each_shard_has_its_own_build_state() {
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    run(&dir, &["resolve"]);
    run(
        &dir,
        &[
            "build",
            "--shard-id",
            "0",
            "--total-shards",
            "2",
            "--as-of",
            "2024-01-04T00:00:00Z",
        ],
    );
    let s0 = run(&dir, &["status", "--shard-id", "0", "--total-shards", "2"]);
    let s1 = run(&dir, &["status", "--shard-id", "1", "--total-shards", "2"]);
    assert_eq!(
        (s0["cursor"].as_i64(), s1["cursor"].as_i64()),
        (Some(3), Some(0))
    );
    assert_eq!(s0["active"], false, "not every shard has completed");
    run(
        &dir,
        &[
            "build",
            "--shard-id",
            "1",
            "--total-shards",
            "2",
            "--as-of",
            "2024-01-04T00:00:00Z",
        ],
    );
    assert_eq!(
        run(&dir, &["status", "--shard-id", "1", "--total-shards", "2"])["cursor"],
        3
    );
    assert_eq!(run(&dir, &["status"])["active"], true);
}

/// The rows of one entity in the customer history, as (state, valid_from).
fn states_of(dir: &Dir, id: &str) -> Vec<(String, String)> {
    history(dir, "customer")
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["customer_id"] == id)
        .map(|r| {
            (
                r["customer_state"].as_str().unwrap().to_string(),
                r["valid_from"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

// Incremental builds load only the working state they can change (the entities their rows
// reach, and those whose time rules are due before `as_of`); an untouched entity's rules
// must still fire in the sweep exactly when due, and the result must equal a full rebuild.
#[test]
fn incremental_sweeps_fire_only_the_rules_that_are_due() {
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    build(&dir, "01-04");
    let signup = |who: &str, ts: &str| app("signup", ts, json!({"email": format!("{who}@x.com")}));
    // Alice (last event 01-03 10:00) turns dormant at 02-02 10:00 and churned at 02-12 10:00.
    ingest(&dir, &[signup("bob", "02-01T09:00")]);
    assert_eq!(build(&dir, "02-05")["mode"], "INCREMENTAL");
    let states =
        |dir: &Dir| -> Vec<String> { states_of(dir, A).into_iter().map(|(s, _)| s).collect() };
    assert_eq!(states(&dir), ["active", "active", "active", "dormant"]);
    ingest(&dir, &[signup("carol", "02-06T09:00")]);
    build(&dir, "02-10");
    assert_eq!(
        states(&dir),
        ["active", "active", "active", "dormant"],
        "not yet due"
    );
    ingest(&dir, &[signup("dave", "02-20T09:00")]);
    build(&dir, "02-20");
    assert_eq!(
        states(&dir),
        ["active", "active", "active", "dormant", "churned"]
    );
    let incremental = history(&dir, "customer");
    assert_eq!(incremental.as_array().unwrap().len(), 8);
    let full = run(
        &dir,
        &["build", "--full", "--as-of", "2024-02-20T00:00:00Z"],
    );
    assert_eq!(full["mode"], "FULL");
    assert_eq!(history(&dir, "customer"), incremental);
}

// The run log: every job run that gets as far as the catalog is logged, failures with their
// error, and `status` shows the latest runs.
#[test]
fn failed_runs_are_logged_with_their_error() {
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    let failed = TestCommand::new(&dir)
        .args(["build", "--version", "nope"])
        .run();
    failed.assert_code(1);
    assert!(failed.stderr.contains("NotFoundError"), "{}", failed.stderr);
    build(&dir, "01-04");
    let runs = run(&dir, &["status"])["recent_runs"].clone();
    let summary: Vec<(&str, &str)> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["job"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("build", "succeeded"),
            ("build", "failed"),
            ("normalize", "succeeded"),
            ("ingest", "succeeded"),
        ]
    );
    let error = runs[1]["result"]["error"].as_str().unwrap();
    assert!(
        error.starts_with("NotFoundError") && error.contains("nope"),
        "{error}"
    );
    assert_eq!(runs[0]["result"]["events_processed"], 3);
    assert_eq!(runs[3]["result"]["records"], 3);
}

// CONTRACTS H7: deduplication by renormalization is reversible. (The batch ledger keeps every
// record in ledger/raw; a row found to be a duplicate leaves ledger/events, and widening the
// `event_id` fields again brings it back.)
#[test]
fn deduplication_by_renormalization_is_reversible() {
    let dir = Dir::from_fixture("cust");
    let email = json!({"email": "a@x.com"});
    let upgrade = |ts: &str, plan: &str, mrr: &str| {
        app(
            "upgrade",
            ts,
            json!({"email": "a@x.com", "plan": plan, "mrr": mrr}),
        )
    };
    ingest(
        &dir,
        &[
            app("signup", "01-01T10:00", email),
            upgrade("01-01T10:01", "pro", "1"),
            upgrade("01-01T10:02", "enterprise", "2"),
        ],
    );
    build(&dir, "01-02");
    let plan = |dir: &Dir| current(dir, "customer")[0]["plan"].clone();
    let total = |dir: &Dir| run(dir, &["status"])["total_events"].clone();
    assert_eq!((plan(&dir), total(&dir)), (json!("enterprise"), json!(3)));
    let original = std::fs::read_to_string(dir.path().join("sources/app.yaml")).unwrap();
    dir.edit(
        "sources/app.yaml",
        "  timestamp: ts\n",
        "  timestamp: ts\n  event_id: [email]\n",
    );
    let narrowed = build(&dir, "01-02");
    assert_eq!(narrowed["mode"], "FULL_RENORMALIZE", "{narrowed}");
    assert_eq!(narrowed["events_processed"], 2, "{narrowed}");
    assert_eq!((plan(&dir), total(&dir)), (json!("pro"), json!(2)));
    dir.write("sources/app.yaml", &original);
    let widened = run(
        &dir,
        &["build", "--from-raw", "--as-of", "2024-01-02T00:00:00Z"],
    );
    assert_eq!(widened["events_processed"], 3, "{widened}");
    assert_eq!((plan(&dir), total(&dir)), (json!("enterprise"), json!(3)));
}

// CONTRACTS H13 (the batch form of an inline duplicate-only ingest: ingest, normalize, build)
#[test]
fn a_duplicate_only_call_changes_nothing() {
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    build(&dir, "01-04");
    let n = ingest(&dir, &s1()[..1]);
    assert_eq!(
        (&n["duplicates_skipped"], &n["events_ingested"]),
        (&json!(1), &json!(0)),
        "{n}"
    );
    assert_eq!(build(&dir, "01-04")["mode"], "SKIP");
    let st = run(&dir, &["status"]);
    assert_eq!(
        (&st["cursor"], &st["pending_events"], &st["total_events"]),
        (&json!(3), &json!(0), &json!(3))
    );
    assert_eq!(history(&dir, "customer").as_array().unwrap().len(), 3);
}

// CONTRACTS H9
#[test]
fn renormalization_updates_timestamps_and_the_replay_order() {
    let dir = Dir::from_fixture("cust");
    let event = |ty: &str, ts: &str, at: &str, plan: &str| {
        app(
            ty,
            ts,
            json!({"email": "a@x.com", "plan": plan, "mrr": "1", "at": format!("2024-{at}:00Z")}),
        )
    };
    ingest(
        &dir,
        &[
            event("signup", "01-01T10:00", "01-01T10:00", ""),
            event("upgrade", "01-02T10:00", "01-04T10:00", "pro"),
            event("upgrade", "01-03T10:00", "01-03T10:00", "enterprise"),
        ],
    );
    build(&dir, "01-05");
    let ea = "fbf2ddb4-0443-8ffd-afe7-93b0897586b9";
    let plan = |dir: &Dir| current(dir, "customer")[0]["plan"].clone();
    let times = |dir: &Dir| -> Vec<String> {
        run(dir, &["ledger", "events", ea, "--format", "json"])
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["timestamp"].as_str().unwrap()[5..16].to_string())
            .collect()
    };
    assert_eq!(plan(&dir), "enterprise");
    assert_eq!(times(&dir), ["01-01T10:00", "01-02T10:00", "01-03T10:00"]);
    dir.edit("sources/app.yaml", "  timestamp: ts\n", "  timestamp: at\n");
    assert_eq!(build(&dir, "01-05")["mode"], "FULL_RENORMALIZE");
    assert_eq!(plan(&dir), "pro", "the pro upgrade is now the later one");
    let mut retimed = times(&dir);
    retimed.sort();
    assert_eq!(retimed, ["01-01T10:00", "01-03T10:00", "01-04T10:00"]);
}

// CONTRACTS G4: out-of-order input gives S1's rows; sequences follow the input order.
#[test]
fn out_of_order_input_keeps_input_sequences() {
    let dir = Dir::from_fixture("cust");
    let reversed: Vec<String> = s1().into_iter().rev().collect();
    ingest(&dir, &reversed);
    build(&dir, "01-04");
    let events = run(&dir, &["ledger", "events", A, "--format", "json"]);
    let order: Vec<(i64, &str)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["sequence"].as_i64().unwrap(),
                e["event_type"].as_str().unwrap(),
            )
        })
        .collect();
    let mut by_sequence = order.clone();
    by_sequence.sort();
    assert_eq!(by_sequence, [(1, "login"), (2, "upgrade"), (3, "signup")]);
    let rows: Vec<(Json, Json, Json)> = history(&dir, "customer")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["plan"].clone(),
                r["logins"].clone(),
                r["valid_from"].clone(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows.iter().map(|r| (&r.0, &r.1)).collect::<Vec<_>>(),
        [
            (&json!("free"), &json!(0)),
            (&json!("pro"), &json!(0)),
            (&json!("pro"), &json!(1))
        ]
    );
}

// CONTRACTS K1
#[test]
fn build_counters() {
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    let first = build(&dir, "01-04");
    for (counter, value) in [
        ("events_processed", 3),
        ("effects_produced", 3),
        ("entities_created", 1),
        ("entities_updated", 0),
        ("merges_detected", 0),
        ("late_arrivals", 0),
        ("events_failed", 0),
    ] {
        assert_eq!(first[counter], value, "{counter}: {first}");
    }
    assert_eq!(first["mode"], "INCREMENTAL");
    ingest(
        &dir,
        &[app(
            "login",
            "01-04T10:00",
            json!({"email": "alice@x.com", "n": 2}),
        )],
    );
    let second = build(&dir, "01-05");
    for (counter, value) in [
        ("entities_created", 0),
        ("entities_updated", 1),
        ("effects_produced", 1),
    ] {
        assert_eq!(second[counter], value, "{counter}: {second}");
    }
}

// CONTRACTS K2, CONTRACTS K6: the shape of a normalization failure; a call of only failures
// is reported, not raised.
#[test]
fn normalization_failures_are_reported_with_their_shape() {
    let dir = Dir::from_fixture("cust");
    let bad = json!({"type": "signup", "ts": "bad-ts", "email": "a@x.com"});
    let n = ingest(&dir, &[bad.to_string()]);
    assert_eq!(
        (&n["events_ingested"], &n["events_failed"]),
        (&json!(0), &json!(1)),
        "{n}"
    );
    let failure = &n["failures"][0];
    assert_eq!(
        (
            &failure["stage"],
            &failure["source"],
            &failure["handler"],
            &failure["field"],
            &failure["raw"]
        ),
        (
            &json!("normalization"),
            &json!("app"),
            &json!("signup"),
            &json!("ts"),
            &bad
        ),
        "{failure}"
    );
    let nope = app("nope", "01-01T00:00", json!({}));
    let n = ingest(&dir, &[nope]);
    assert_eq!(
        (&n["events_ingested"], &n["events_failed"]),
        (&json!(0), &json!(1)),
        "{n}"
    );
}

const EA: &str = "fbf2ddb4-0443-8ffd-afe7-93b0897586b9";

fn shard(dir: &Dir, i: u32, as_of: &str) -> Json {
    run(
        dir,
        &[
            "build",
            "--shard-id",
            &i.to_string(),
            "--total-shards",
            "2",
            "--as-of",
            &format!("2024-{as_of}T00:00:00Z"),
        ],
    )
}

fn shard_cursor(dir: &Dir, i: u32) -> Json {
    run(
        dir,
        &[
            "status",
            "--shard-id",
            &i.to_string(),
            "--total-shards",
            "2",
        ],
    )["cursor"]
        .clone()
}

/// The customer history as comparable rows (the build's bookkeeping columns aside).
fn customer_rows(dir: &Dir) -> Vec<Json> {
    let mut rows: Vec<Json> = history(dir, "customer")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            json!([
                r["customer_id"],
                r["customer_state"],
                r["email"],
                r["logins"],
                r["valid_from"],
                r["valid_to"],
                r["merged_into"]
            ])
        })
        .collect();
    rows.sort_by_key(|r| r.to_string());
    rows
}

// CONTRACTS J5, CONTRACTS J6: resolve once, then build per shard; a merge whose loser and winner
// live in different shards is applied by each shard to the ids it owns.
/// The three ingest calls of J5 and J6.
fn j6_calls() -> [Vec<String>; 3] {
    let signup = |ts: &str, extra: Json| app("signup", ts, extra);
    let login = |ts: &str, who: &str| app("login", ts, json!({"email": who, "n": 1}));
    [
        vec![
            signup("01-01T00:00", json!({"email": "a@x.com"})),
            signup("01-02T00:00", json!({"email": "b@x.com"})),
        ],
        vec![
            login("01-03T00:00", "a@x.com"),
            login("01-04T00:00", "b@x.com"),
            signup("01-05T00:00", json!({"phone": "666"})),
        ],
        vec![app(
            "link",
            "01-06T00:00",
            json!({"email": "a@x.com", "phone": "666"}),
        )],
    ]
}

#[test]
fn merges_across_shards() {
    let calls = j6_calls();
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &calls[0]);
    run(&dir, &["resolve"]);
    shard(&dir, 0, "01-02");
    shard(&dir, 1, "01-02");
    ingest(&dir, &calls[1]);
    assert_eq!(shard(&dir, 0, "01-05")["mode"], "SKIP", "before resolve");
    assert_eq!(shard_cursor(&dir, 0), 2);
    run(&dir, &["resolve"]);
    shard(&dir, 0, "01-05");
    shard(&dir, 1, "01-05");
    assert_eq!(
        (shard_cursor(&dir, 0), shard_cursor(&dir, 1)),
        (json!(5), json!(5))
    );

    ingest(&dir, &calls[2]);
    assert_eq!(run(&dir, &["resolve"])["merges_detected"], 1);
    let s1 = shard(&dir, 1, "01-07");
    let s0 = shard(&dir, 0, "01-07");
    assert_eq!(
        (&s1["merges_detected"], &s0["merges_detected"]),
        (&json!(0), &json!(1))
    );
    let rows = customer_rows(&dir);
    let ea: Vec<&Json> = rows.iter().filter(|r| r[0] == EA).collect();
    assert_eq!(ea.len(), 2, "{ea:?}");
    assert_eq!(
        (&ea[0][3], &ea[1][3], &ea[1][5]),
        (&json!(0), &json!(1), &Json::Null)
    );
    assert!(
        ea[0][5].as_str().unwrap().starts_with("2024-01-03"),
        "{}",
        ea[0]
    );
    let p6: Vec<&Json> = rows
        .iter()
        .filter(|r| r[0] != EA && r[2].is_null())
        .collect();
    assert_eq!(p6.len(), 1, "{rows:?}");
    assert_eq!(p6[0][6], EA);
    assert!(
        p6[0][5].as_str().unwrap().starts_with("2024-01-06"),
        "{}",
        p6[0]
    );

    // The same ingests unsharded, one build per call, give the same rows.
    let single = Dir::from_fixture("cust");
    for (call, as_of) in calls.iter().zip(["01-02", "01-05", "01-07"]) {
        ingest(&single, call);
        build(&single, as_of);
    }
    assert_eq!(customer_rows(&single), rows);
}

// CONTRACTS J7, CONTRACTS I12: merge and redact on a sharded version leave the rebuilds to the
// shards; erase does everything at once, and only when it can take every shard's lease.
#[test]
fn commands_on_a_sharded_version() {
    let calls = j6_calls();
    let dir = Dir::from_fixture("cust");
    for (call, as_of) in calls.iter().zip(["01-02", "01-05", "01-07"]) {
        ingest(&dir, call);
        run(&dir, &["resolve"]);
        shard(&dir, 0, as_of);
        shard(&dir, 1, as_of);
    }
    let eb = run(&dir, &["identity", "lookup", "b@x.com", "--format", "json"])["entity_id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = customer_rows(&dir);
    let m = run(&dir, &["merge", &eb, EA, "--as-of", "2024-01-10T00:00:00Z"]);
    assert_eq!(
        (
            &m["events_reassigned"],
            &m["entities_rebuilt"],
            &m["tombstones_produced"]
        ),
        (&json!(2), &json!(0), &json!(0)),
        "{m}"
    );
    assert_eq!(customer_rows(&dir), before, "the shards apply the merge");
    shard(&dir, 1, "01-11");
    shard(&dir, 0, "01-11");
    let rows = customer_rows(&dir);
    let eb_last = rows.iter().rfind(|r| r[0] == eb.as_str()).unwrap();
    assert_eq!(
        (&eb_last[5], &eb_last[6]),
        (&json!("2024-01-10T00:00:00Z"), &json!(EA))
    );
    let current = run(&dir, &["table", "customer", "--format", "json"]);
    let ea = current
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["customer_id"] == EA)
        .unwrap();
    assert_eq!(ea["logins"], 2);

    // redact rewrites the ledger at once; shard 0 rebuilds EA's history at its next build.
    let r = run(&dir, &["redact", EA]);
    assert_eq!(r["rebuilt"], false, "{r}");
    assert_ne!(r["rows_redacted"], 0);
    shard(&dir, 0, "01-11");
    let current = run(&dir, &["table", "customer", "--format", "json"]);
    let ea = current
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["customer_id"] == EA)
        .unwrap();
    assert_eq!(ea["email"], "[REDACTED]");

    // erase needs every lease: with shard 1's held, it fails at once and changes nothing.
    let version = run(&dir, &["status"])["version"]
        .as_str()
        .unwrap()
        .to_string();
    let lease = format!("build:{version}_s1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let database = format!(
        "sqlite://{}",
        dir.path().join(".defacto/defacto.db").display()
    );
    let catalog = rt
        .block_on(defacto_jobs::catalog::Catalog::connect(
            &database, "defacto",
        ))
        .unwrap();
    rt.block_on(catalog.take_lease(
        &lease,
        "build@elsewhere:1",
        std::time::Duration::from_secs(300),
    ))
    .unwrap();
    let held = TestCommand::new(&dir).args(["erase", EA]).run();
    held.assert_code(1);
    assert!(
        held.stderr.contains("StorageError") && held.stderr.contains(&format!("{version}_s1")),
        "{}",
        held.stderr
    );
    let rows = customer_rows(&dir);
    assert!(rows.iter().any(|r| r[0] == EA));
    rt.block_on(catalog.release_lease(&lease, "build@elsewhere:1"))
        .unwrap();

    let r = run(&dir, &["erase", EA]);
    assert_eq!(
        (
            &r["entities_erased"],
            &r["events_deleted"],
            &r["merge_log_cleaned"]
        ),
        (&json!(3), &json!(7), &json!(2)),
        "{r}"
    );
    assert_eq!(
        customer_rows(&dir),
        Vec::<Json>::new(),
        "no row of EA, P6 or Eb is left"
    );
    assert_eq!(shard(&dir, 0, "01-12")["mode"], "SKIP");
    assert_eq!(shard(&dir, 1, "01-12")["mode"], "SKIP");
}

// CONTRACTS K9, CONTRACTS K5 (through the command line)
#[test]
fn assert_checks_the_current_row() {
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    build(&dir, "01-04");
    let assert = |args: &[&str]| {
        let mut all = vec!["assert", A];
        all.extend_from_slice(args);
        TestCommand::new(&dir).args(all).run()
    };
    let ok = assert(&["state=active", "plan=pro", "mrr=49", "logins=1"]);
    ok.assert_code(0);
    assert_eq!(ok.stdout, "");
    let wrong = assert(&["plan=pro", "mrr=\"49\""]);
    wrong.assert_code(1);
    assert_eq!(
        wrong.stdout,
        format!("customer {A} mrr: expected \"49\", got 49.0\n  plan: \"pro\"\n- mrr: \"49\"\n+ mrr: 49.0\n")
    );
    let null = assert(&["plan=null"]);
    null.assert_code(1);
    assert!(null
        .stdout
        .starts_with(&format!("customer {A} plan: expected null, got \"pro\"\n")));
    let churned = assert(&["state=churned"]);
    churned.assert_code(1);
    assert!(churned.stdout.starts_with(&format!(
        "customer {A} expected state 'churned', got 'active'"
    )));
    let unknown = TestCommand::new(&dir).args(["assert", "nope"]).run();
    unknown.assert_code(1);
    assert_eq!(unknown.stdout, "nope not found in any entity type\n");
    let bad = assert(&["plan"]);
    bad.assert_code(2);
    assert!(
        bad.stderr.contains("'plan' is not KEY=VALUE"),
        "{}",
        bad.stderr
    );
}

// CONTRACTS K4 (through the command line: what the builds wrote, number columns as floats)
#[test]
fn timeline_of_an_entity() {
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    build(&dir, "01-04");
    run(&dir, &["tick", "--as-of", "2024-03-01T00:00:00Z"]);
    let tl = run(&dir, &["timeline", A]);
    assert_eq!(tl["entity_type"], "customer");
    let entries = tl["entries"].as_array().unwrap();
    let effects: Vec<&Json> = entries.iter().map(|e| &e["effects"]).collect();
    assert_eq!(
        effects,
        [
            &json!([
                "Entity created",
                "email: Alice@X.com",
                "plan: free",
                "mrr: 0.0",
                "logins: 0",
                "annual: 0.0"
            ]),
            &json!(["plan: free → pro", "mrr: 0.0 → 49.0", "annual: 0.0 → 588.0"]),
            &json!(["logins: 0 → 1"]),
            &json!(["State: active → dormant"]),
            &json!(["State: dormant → churned"]),
        ]
    );
    let events = run(&dir, &["ledger", "events", A, "--format", "json"]);
    for (entry, event) in entries.iter().zip(events.as_array().unwrap()) {
        assert_eq!(entry["event_id"], event["event_id"]);
    }
    assert_eq!(
        (
            &entries[0]["event_type"],
            &entries[0]["state_before"],
            &entries[0]["state_after"]
        ),
        (&json!("signup"), &Json::Null, &json!("active"))
    );
    assert_eq!(
        (&entries[3]["event_type"], &entries[3]["event_id"]),
        (&json!(""), &json!(""))
    );
    let none = run(&dir, &["timeline", "nope"]);
    assert_eq!(
        none,
        json!({"entity_id": "nope", "entity_type": "", "entries": []})
    );
}

// CONTRACTS H17: the identity salt (DEFACTO_IDENTITY_SALT, a deployment secret) salts derived
// ids; adding, changing or removing it resets identity, recorded by its fingerprint only.
#[test]
fn identity_salt_changes_reset_identity() {
    const SALTED: &str = "da1adecd-33a3-83ed-be26-2f86b88cb73a";
    let dir = Dir::from_fixture("cust");
    ingest(&dir, &s1());
    assert_eq!(build(&dir, "01-04")["mode"], "INCREMENTAL");
    let salted_build = |salt: Option<&str>| {
        let mut cmd = TestCommand::new(&dir).args(["build", "--as-of", "2024-01-04T00:00:00Z"]);
        if let Some(salt) = salt {
            cmd = cmd.env("DEFACTO_IDENTITY_SALT", salt);
        }
        let out = cmd.run();
        out.assert_code(0);
        serde_json::from_str::<Json>(&out.stdout).unwrap()
    };
    let fingerprints = || {
        let database = format!(
            "sqlite://{}",
            dir.path().join(".defacto/defacto.db").display()
        );
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let catalog = defacto_jobs::catalog::Catalog::connect(&database, "defacto")
                .await
                .unwrap();
            let resolve = catalog.resolve_state().await.unwrap().salt_fingerprint;
            let version = catalog.active_version().await.unwrap().unwrap();
            let key = defacto_jobs::jobs::build::state_key(&version.version, None);
            let build = catalog.build_state(&key, &version).await.unwrap();
            (resolve.unwrap(), build.salt_fingerprint)
        })
    };
    assert_eq!(fingerprints(), (String::new(), String::new()));
    let ids = |rows: &Json| -> Vec<String> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r["customer_id"].as_str().unwrap().to_string())
            .collect()
    };

    assert_eq!(salted_build(Some("s1"))["mode"], "FULL_WITH_IDENTITY_RESET");
    let fingerprint = "e8bc163c82eee18733288c7d4ac636db3a6deb013ef2d37b68322be20edc45cc";
    assert_eq!(
        fingerprints(),
        (fingerprint.to_string(), fingerprint.to_string())
    );
    assert_eq!(ids(&history(&dir, "customer")), [SALTED; 3]);
    assert_eq!(salted_build(Some("s1"))["mode"], "SKIP");

    assert_eq!(salted_build(None)["mode"], "FULL_WITH_IDENTITY_RESET");
    assert_eq!(ids(&history(&dir, "customer")), [A; 3]);
    assert_eq!(fingerprints(), (String::new(), String::new()));
}
