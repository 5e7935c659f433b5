//! The real pipeline on the embedded default (local lake + SQLite), driven through the
//! `defacto` binary: every job's output must agree row for row with the core engine's
//! in-memory replay of the same ingest calls.

#[macro_use]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use defacto_core::definitions::Definitions;
use defacto_core::engine::{BuildOptions, Engine};
use defacto_core::history::HistoryRow;
use defacto_jobs::history_table::{entity_schema, read_entity_rows};
use defacto_jobs::lake::{tables, Lake};
use harness::{fixture, run, Backend, Dir, TestCommand};
use serde_json::Value as Json;

const AS_OF: &str = "2024-05-01T00:00:00Z";

/// The showcase example copied to a temp folder.
fn showcase(backend: Backend) -> Dir {
    let dir = Dir::empty().on(backend);
    fixture::copy_dir(&fixture::repo_root().join("examples/showcase"), dir.path());
    dir
}

fn lines(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The lake a folder's commands use, with their object-store settings.
fn lake_of(dir: &Dir) -> Lake {
    let env: std::collections::HashMap<String, String> = dir.env().iter().cloned().collect();
    match env.get("DEFACTO_LAKE") {
        Some(url) => {
            let options = env
                .iter()
                .filter(|(k, _)| k.starts_with("AWS_"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Lake::with_options(url, options).unwrap()
        }
        None => Lake::new(&dir.path().join(".defacto/lake").display().to_string()).unwrap(),
    }
}

/// Every history row of every entity table of the active version, by table.
fn lake_history(dir: &Dir, version: &str) -> BTreeMap<String, Vec<HistoryRow>> {
    let defs = Definitions::load(dir.path()).unwrap();
    let lake = lake_of(dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut out = BTreeMap::new();
    for (name, entity) in &defs.entities {
        let table = tables::history(version, name);
        let batches = rt
            .block_on(lake.query_all(&[("h", &table, entity_schema(entity))], "SELECT * FROM h"))
            .unwrap();
        let mut rows: Vec<HistoryRow> = batches
            .iter()
            .flat_map(|b| read_entity_rows(entity, b).unwrap())
            .collect();
        rows.sort_by(|a, b| (&a.entity_id, a.valid_from).cmp(&(&b.entity_id, b.valid_from)));
        out.insert(name.clone(), rows);
    }
    out
}

/// The same calls through the core engine.
fn engine_history(
    dir: &Dir,
    calls: &[(&str, Vec<Json>)],
    builds_after: &[usize],
) -> BTreeMap<String, Vec<HistoryRow>> {
    let defs = Definitions::load(dir.path()).unwrap();
    let as_of = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
    let mut engine = Engine::new(defs.clone());
    for (i, (source, raws)) in calls.iter().enumerate() {
        engine.ingest(source, raws, as_of).unwrap();
        if builds_after.contains(&i) {
            engine.build(BuildOptions::at(as_of));
        }
    }
    let mut out = BTreeMap::new();
    for name in defs.entities.keys() {
        let mut rows: Vec<HistoryRow> =
            engine.rows(name).into_iter().cloned().map(micros).collect();
        rows.sort_by(|a, b| (&a.entity_id, a.valid_from).cmp(&(&b.entity_id, b.valid_from)));
        out.insert(name.clone(), rows);
    }
    out
}

/// History tables keep microseconds (Delta timestamps); the engine keeps nanoseconds, and
/// declared types decide the column kinds. Bring engine rows to what a table reads back.
fn trunc(t: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    let n = defacto_core::value::instant_nanos(&t);
    defacto_core::value::instant_from_nanos(n - n.rem_euclid(1000)).unwrap()
}

fn micros(mut row: HistoryRow) -> HistoryRow {
    row.valid_from = trunc(row.valid_from);
    row.valid_to = row.valid_to.map(trunc);
    row.last_event_time = row.last_event_time.map(trunc);
    row.state_entered_time = row.state_entered_time.map(trunc);
    row.created_time = row.created_time.map(trunc);
    row
}

/// Engine values as the typed history columns hold them.
fn typed(defs: &Definitions, entity: &str, rows: Vec<HistoryRow>) -> Vec<HistoryRow> {
    use defacto_core::definitions::PropertyType;
    use defacto_core::Value;
    let props: Vec<_> = defs.entities[entity]
        .properties
        .values()
        .map(|p| p.kind)
        .collect();
    rows.into_iter()
        .map(|mut r| {
            for (v, kind) in r.properties.iter_mut().zip(&props) {
                *v = match (kind, v.clone()) {
                    (_, Value::Null) => Value::Null,
                    (Some(PropertyType::Number), x) => {
                        defacto_core::normalize::coerce(x, "number").unwrap_or(Value::Null)
                    }
                    (Some(PropertyType::Integer), x) => {
                        defacto_core::normalize::coerce(x, "integer").unwrap_or(Value::Null)
                    }
                    (Some(PropertyType::Boolean), x) => {
                        defacto_core::normalize::coerce(x, "boolean").unwrap_or(Value::Null)
                    }
                    (Some(PropertyType::DateTime), x) => {
                        defacto_core::normalize::coerce(x, "datetime").unwrap_or(Value::Null)
                    }
                    (_, Value::Array(a)) => Value::str(Value::Array(a).to_text()),
                    (_, x) => defacto_core::normalize::coerce(x, "string").unwrap_or(Value::Null),
                };
            }
            r
        })
        .collect()
}

fn assert_same_history(dir: &Dir, version: &str, expected: BTreeMap<String, Vec<HistoryRow>>) {
    let defs = Definitions::load(dir.path()).unwrap();
    let got = lake_history(dir, version);
    for (entity, rows) in expected {
        let rows = typed(&defs, &entity, rows);
        assert_eq!(got[&entity].len(), rows.len(), "{entity}: row count");
        for (g, e) in got[&entity].iter().zip(&rows) {
            assert_eq!(g, e, "{entity}");
        }
    }
}

// Issue 4: the jobs agree row for row with the core engine, for the showcase.
on_all!(showcase_pipeline_agrees_with_the_engine);
fn showcase_pipeline_agrees_with_the_engine(backend: Backend) {
    let dir = showcase(backend);
    let app = dir.path().join("data/app.jsonl");
    let billing = dir.path().join("data/billing.jsonl");
    let ingested = run(&dir, &["ingest", "--source", "app", app.to_str().unwrap()]);
    assert_eq!(ingested["malformed"], 0);
    run(
        &dir,
        &["ingest", "--source", "billing", billing.to_str().unwrap()],
    );
    let normalized = run(&dir, &["normalize"]);
    assert_eq!(normalized["events_failed"], 2, "{normalized}");
    assert_eq!(normalized["duplicates_skipped"], 1, "{normalized}");
    let built = run(&dir, &["build", "--as-of", AS_OF]);
    assert_eq!(built["mode"], "INCREMENTAL", "{built}");
    assert_eq!(built["merges_detected"], 2, "{built}");
    assert_eq!(built["events_failed"], 0, "{built}");
    let status = run(&dir, &["status"]);
    assert_eq!(status["pending_events"], 0);
    assert_eq!(status["dirty"], false);
    assert_eq!(status["active"], true);
    let version = status["version"].as_str().unwrap().to_string();

    let calls = vec![("app", lines(&app)), ("billing", lines(&billing))];
    assert_same_history(&dir, &version, engine_history(&dir, &calls, &[1]));

    // Nothing new: SKIP. A forced FULL build rewrites the same rows.
    assert_eq!(run(&dir, &["build", "--as-of", AS_OF])["mode"], "SKIP");
    let one_pass = run(&dir, &["build", "--full", "--as-of", AS_OF]);
    assert_eq!(one_pass["mode"], "FULL");
    assert_same_history(&dir, &version, engine_history(&dir, &calls, &[1]));
    let status_after_one_pass = run(&dir, &["status"]);
    let slots_after_one_pass = working_state(&dir, &version);
    assert!(slots_after_one_pass.len() > 10, "{slots_after_one_pass:?}");

    // Issue 4: a FULL build replayed a few entities at a time (3 ledger rows per partition:
    // dozens of partitions, the merged customers' among them) writes the same rows, counts the
    // same and leaves the same build state as one pass.
    let full_in_parts = |size: &str| {
        TestCommand::new(&dir)
            .args(["build", "--full", "--as-of", AS_OF])
            .env("DEFACTO_BUILD_PARTITION_EVENTS", size)
            .run()
    };
    let out = full_in_parts("3");
    out.assert_code(0);
    let partitioned: Json = serde_json::from_str(&out.stdout).unwrap();
    for counter in [
        "mode",
        "events_processed",
        "effects_produced",
        "entities_created",
        "entities_updated",
        "merges_detected",
        "events_failed",
        "failures",
    ] {
        assert_eq!(partitioned[counter], one_pass[counter], "{counter}");
    }
    assert_same_history(&dir, &version, engine_history(&dir, &calls, &[1]));
    let status = run(&dir, &["status"]);
    for field in [
        "cursor",
        "watermark",
        "dirty",
        "total_events",
        "pending_events",
    ] {
        assert_eq!(status[field], status_after_one_pass[field], "{field}");
    }
    // Saved partition by partition as they replay, the working state is one pass's.
    assert_eq!(working_state(&dir, &version), slots_after_one_pass);
    // A bad partition size is a configuration error (exit 2) before anything is touched.
    let out = full_in_parts("zero");
    out.assert_code(2);
    assert!(
        out.stderr.contains("DEFACTO_BUILD_PARTITION_EVENTS"),
        "{}",
        out.stderr
    );
    assert_eq!(run(&dir, &["status"])["dirty"], false);
}

// Issue 4: incremental runs over several ingests equal the engine (and one full build).
on_all!(incremental_builds_agree_with_the_engine);
fn incremental_builds_agree_with_the_engine(backend: Backend) {
    let dir = showcase(backend);
    let app = lines(&dir.path().join("data/app.jsonl"));
    let billing = lines(&dir.path().join("data/billing.jsonl"));
    let chunk = |v: &[Json], i: usize, n: usize| v[v.len() * i / n..v.len() * (i + 1) / n].to_vec();
    let mut calls = Vec::new();
    for i in 0..3 {
        calls.push(("app", chunk(&app, i, 3)));
        calls.push(("billing", chunk(&billing, i, 3)));
    }
    for (i, (source, raws)) in calls.iter().enumerate() {
        let file = dir.path().join(format!("call{i}.jsonl"));
        std::fs::write(
            &file,
            raws.iter()
                .map(|r| r.to_string() + "\n")
                .collect::<String>(),
        )
        .unwrap();
        run(
            &dir,
            &["ingest", "--source", source, file.to_str().unwrap()],
        );
        if i % 2 == 1 {
            run(&dir, &["normalize"]);
            run(&dir, &["build", "--as-of", AS_OF]);
        }
    }
    let version = run(&dir, &["status"])["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_same_history(&dir, &version, engine_history(&dir, &calls, &[1, 3, 5]));
}

on_both!(ingest_rejects_an_unknown_source_and_appends_nothing);
fn ingest_rejects_an_unknown_source_and_appends_nothing(backend: Backend) {
    let dir = showcase(backend);
    let app = dir.path().join("data/app.jsonl");
    let out = TestCommand::new(&dir)
        .args(["ingest", "--source", "nosuch", app.to_str().unwrap()])
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("NotFoundError") && out.stderr.contains("nosuch"),
        "{}",
        out.stderr
    );
    let normalized = run(&dir, &["normalize"]);
    assert_eq!(normalized["events_ingested"], 0);
}

on_both!(ingest_reports_files_it_cannot_read);
fn ingest_reports_files_it_cannot_read(backend: Backend) {
    let dir = showcase(backend);
    for (name, content, fragment) in [
        ("bad.json", "[{\"a\": 1}, ", "bad.json: line"),
        ("events.xml", "<x/>", "unknown file format"),
        ("latin1.jsonl", "", "not valid UTF-8"),
    ] {
        let path = dir.path().join(name);
        if name == "latin1.jsonl" {
            std::fs::write(&path, b"{\"type\": \"caf\xe9\"}\n").unwrap();
        } else {
            std::fs::write(&path, content).unwrap();
        }
        let out = TestCommand::new(&dir)
            .args(["ingest", "--source", "app", path.to_str().unwrap()])
            .run();
        out.assert_code(1);
        assert!(out.stderr.contains(fragment), "{name}: {}", out.stderr);
    }
    let missing = TestCommand::new(&dir)
        .args(["ingest", "--source", "app", "nope.jsonl"])
        .run();
    missing.assert_code(1);
    assert!(missing.stderr.contains("nope.jsonl"), "{}", missing.stderr);

    // Inputs are streamed: a call whose second file stops being readable part way is
    // rejected whole after its first file's records went out to ledger/raw's files; nothing
    // is committed, those files are deleted, and no sequence is taken.
    let app = dir.path().join("data/app.jsonl");
    let first = run(&dir, &["ingest", "--source", "app", app.to_str().unwrap()]);
    let raw_files = || {
        std::fs::read_dir(dir.path().join(".defacto/lake/ledger/raw"))
            .unwrap()
            .filter(|f| f.as_ref().unwrap().path().extension() == Some("parquet".as_ref()))
            .count()
    };
    let files_before = raw_files();
    let mixed = dir.path().join("mixed.jsonl");
    let mut text = std::fs::read(&app).unwrap();
    text.extend_from_slice(b"{\"type\": \"caf\xe9\"}\n");
    std::fs::write(&mixed, text).unwrap();
    let out = TestCommand::new(&dir)
        .args([
            "ingest",
            "--source",
            "app",
            app.to_str().unwrap(),
            mixed.to_str().unwrap(),
        ])
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("mixed.jsonl: line") && out.stderr.contains("not valid UTF-8"),
        "{}",
        out.stderr
    );
    assert_eq!(
        raw_files(),
        files_before,
        "the rejected call's files are deleted"
    );
    let again = run(&dir, &["ingest", "--source", "app", app.to_str().unwrap()]);
    assert_eq!(
        again["first_sequence"].as_i64().unwrap(),
        first["last_sequence"].as_i64().unwrap() + 1,
        "the rejected call took no sequences"
    );
    let normalized = run(&dir, &["normalize"]);
    assert_eq!(
        ["events_ingested", "duplicates_skipped", "events_failed"]
            .iter()
            .map(|k| normalized[*k].as_u64().unwrap())
            .sum::<u64>(),
        first["records"].as_u64().unwrap() + again["records"].as_u64().unwrap()
    );
}

on_both!(csv_and_json_array_inputs);
fn csv_and_json_array_inputs(backend: Backend) {
    let dir = Dir::from_fixture("cust").on(backend);
    dir.write("in.csv", "type,ts,email,phone\nsignup,2024-01-01T00:00:00Z,a@x.com,555\nsignup,2024-01-01T00:00:00Z,b@x.com,\n");
    dir.write("in.json", "[{\"type\":\"signup\",\"ts\":\"2024-01-01T00:00:00Z\",\"email\":\"a@x.com\",\"phone\":555}]");
    run(&dir, &["ingest", "--source", "app", "in.csv"]);
    run(&dir, &["ingest", "--source", "app", "in.json"]);
    let n = run(&dir, &["normalize"]);
    // CONTRACTS C16: the CSV's "555" is text, the JSON's 555 an Int: different event ids.
    assert_eq!(
        (
            n["events_ingested"].as_u64(),
            n["duplicates_skipped"].as_u64()
        ),
        (Some(3), Some(0)),
        "{n}"
    );
    let b = run(&dir, &["build", "--as-of", "2024-01-10T00:00:00Z"]);
    assert_eq!(b["entities_created"], 2, "{b}");
}

/// Ingests and normalizes the showcase's two files (two calls).
fn load_showcase(dir: &Dir) -> Vec<(&'static str, Vec<Json>)> {
    let app = dir.path().join("data/app.jsonl");
    let billing = dir.path().join("data/billing.jsonl");
    run(dir, &["ingest", "--source", "app", app.to_str().unwrap()]);
    run(
        dir,
        &["ingest", "--source", "billing", billing.to_str().unwrap()],
    );
    run(dir, &["normalize"]);
    vec![("app", lines(&app)), ("billing", lines(&billing))]
}

fn active_version(dir: &Dir) -> String {
    run(dir, &["status"])["version"]
        .as_str()
        .unwrap()
        .to_string()
}

// Issue 4 crash safety: a build that dies at any stage (the process aborts, no cleanup) is
// repaired by the next run — a FULL build, because the dirty flag stayed set — and the tables
// equal those of an uninterrupted run.
on_all!(a_crashed_build_is_repaired_by_the_next);
fn a_crashed_build_is_repaired_by_the_next(backend: Backend) {
    for point in ["before-history", "after-history", "after-working-state"] {
        let dir = showcase(backend);
        let calls = load_showcase(&dir);
        let out = TestCommand::new(&dir)
            .env("DEFACTO_CRASH_AT", point)
            .args(["build", "--as-of", AS_OF])
            .run();
        assert_ne!(out.code, 0, "{point}: the build was expected to die");
        let status = run(&dir, &["status"]);
        assert_eq!(status["dirty"], true, "{point}: {status}");
        let rebuilt = run(&dir, &["build", "--as-of", AS_OF]);
        assert_eq!(rebuilt["mode"], "FULL", "{point}: {rebuilt}");
        assert_same_history(
            &dir,
            &active_version(&dir),
            engine_history(&dir, &calls, &[1]),
        );
    }
}

// A FULL build saves the identity its resolve pass changed while it replays (the catalog is
// otherwise idle then), but always before it writes history: a build that dies just before
// writing history leaves identity saved and the resolve step complete — a resolve run after
// it has nothing to do and resets nothing, and identity is that of a clean resolve.
on_all!(a_full_build_saves_identity_before_it_writes_history);
fn a_full_build_saves_identity_before_it_writes_history(backend: Backend) {
    let dir = showcase(backend);
    load_showcase(&dir);
    let out = TestCommand::new(&dir)
        .env("DEFACTO_CRASH_AT", "before-history")
        .args(["build", "--as-of", AS_OF])
        .run();
    assert_ne!(out.code, 0, "the build was expected to die");
    let after_crash = run(&dir, &["identity", "list", "--format", "json"]);
    let resolved = run(&dir, &["resolve"]);
    assert_eq!(resolved["events_resolved"], 0, "{resolved}");
    assert_eq!(resolved["identity_reset"], false, "{resolved}");

    let clean = showcase(backend);
    load_showcase(&clean);
    run(&clean, &["resolve"]);
    let expected = run(&clean, &["identity", "list", "--format", "json"]);
    assert!(
        expected.as_array().is_some_and(|m| m.len() > 10),
        "{expected}"
    );
    assert_eq!(after_crash, expected);
}

// Issue 4 crash safety with a real `kill -9` in the middle of a build.
#[test]
fn a_build_killed_with_sigkill_is_repaired_by_the_next() {
    let dir = showcase(Backend::Sqlite);
    let calls = load_showcase(&dir);
    let mut child = TestCommand::new(&dir)
        .args(["build", "--as-of", AS_OF])
        .spawn();
    std::thread::sleep(std::time::Duration::from_millis(60));
    let _ = child.kill();
    let _ = child.wait();
    let first = run(&dir, &["build", "--as-of", AS_OF]);
    let mode = first["mode"].as_str().unwrap().to_string();
    assert!(
        ["FULL", "INCREMENTAL", "SKIP"].contains(&mode.as_str()),
        "{first}"
    );
    assert_same_history(
        &dir,
        &active_version(&dir),
        engine_history(&dir, &calls, &[1]),
    );
}

// PIPELINE.md §1 leases: a job that cannot take its lease exits 1 at once naming the holder,
// and writes nothing.
on_both!(a_held_lease_stops_a_second_build);
fn a_held_lease_stops_a_second_build(backend: Backend) {
    let dir = showcase(backend);
    load_showcase(&dir);
    let version = active_version(&dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (database, namespace) = catalog_of(&dir);
    rt.block_on(async {
        let catalog = defacto_jobs::catalog::Catalog::connect(&database, &namespace)
            .await
            .unwrap();
        catalog
            .take_lease(
                &format!("build:{version}"),
                "build@other-host:4242",
                std::time::Duration::from_secs(300),
            )
            .await
            .unwrap();
    });
    let out = TestCommand::new(&dir)
        .args(["build", "--as-of", AS_OF])
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("is held by build@other-host:4242"),
        "{}",
        out.stderr
    );
    assert_eq!(
        run(&dir, &["status"])["last_build_mode"],
        Json::Null,
        "nothing was built"
    );
}

/// The working state of the unsharded build of `version`, from the catalog.
fn working_state(
    dir: &Dir,
    version: &str,
) -> BTreeMap<(String, String), defacto_core::interpret::Slot> {
    let (database, namespace) = catalog_of(dir);
    let key = defacto_jobs::jobs::build::state_key(version, None);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let catalog = defacto_jobs::catalog::Catalog::connect(&database, &namespace)
            .await
            .unwrap();
        catalog.load_working_state(&key, None).await.unwrap()
    })
}

fn catalog_of(dir: &Dir) -> (String, String) {
    let get = |k: &str| {
        dir.env()
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    (
        get("DEFACTO_DATABASE").unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                dir.path().join(".defacto/defacto.db").display()
            )
        }),
        get("DEFACTO_NAMESPACE").unwrap_or_else(|| "defacto".into()),
    )
}

// CONTRACTS J2, CONTRACTS J5 (storage): `resolve` once, then the shards' builds as separate processes
// (run at the same time) write, together, exactly the rows of one unsharded build.
on_all!(sharded_builds_equal_an_unsharded_build);
fn sharded_builds_equal_an_unsharded_build(backend: Backend) {
    let single = showcase(backend);
    load_showcase(&single);
    run(&single, &["build", "--as-of", AS_OF]);
    let sharded = showcase(backend);
    load_showcase(&sharded);
    let resolved = run(&sharded, &["resolve"]);
    assert_eq!(resolved["merges_detected"], 2, "{resolved}");
    let children: Vec<_> = (0..2)
        .map(|i| {
            TestCommand::new(&sharded)
                .args([
                    "build",
                    "--as-of",
                    AS_OF,
                    "--shard-id",
                    &i.to_string(),
                    "--total-shards",
                    "2",
                ])
                .spawn()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let version = active_version(&single);
    assert_eq!(
        lake_history(&sharded, &version),
        lake_history(&single, &version)
    );
    let status = run(&sharded, &["status"]);
    assert_eq!(
        status["active"], true,
        "the last shard to complete activates the version: {status}"
    );
}

// CONTRACTS J4
#[test]
fn shard_parameters_are_checked() {
    let dir = showcase(Backend::Sqlite);
    let out = TestCommand::new(&dir)
        .args(["build", "--shard-id", "2", "--total-shards", "2"])
        .run();
    out.assert_code(2);
    assert!(out.stderr.contains("ConfigError"), "{}", out.stderr);
    let out = TestCommand::new(&dir)
        .args(["build", "--total-shards", "2"])
        .run();
    out.assert_code(2);
}

// Issue 4: `tick` agrees with the engine's tick, and ticking twice equals ticking once (F2).
on_all!(tick_agrees_with_the_engine);
fn tick_agrees_with_the_engine(backend: Backend) {
    ticks_agree_with_the_engine(backend, false);
}

// The working state's `next_due` came after its first rows: a slot written before it (NULL)
// is loaded by every tick, through an index of its own, so ticks over such slots give the
// same history.
#[test]
fn slots_from_before_next_due_are_ticked() {
    ticks_agree_with_the_engine(Backend::Sqlite, true);
}

fn ticks_agree_with_the_engine(backend: Backend, forget_due: bool) {
    let dir = showcase(backend);
    let calls = load_showcase(&dir);
    run(&dir, &["build", "--as-of", "2024-04-01T00:00:00Z"]);
    if forget_due {
        let url = format!(
            "sqlite://{}",
            dir.path().join(".defacto/defacto.db").display()
        );
        let forgot = tokio::runtime::Runtime::new().unwrap().block_on(async {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::query("UPDATE defacto_working_state SET next_due = NULL")
                .execute(&pool)
                .await
                .unwrap()
                .rows_affected()
        });
        assert!(forgot > 0);
    }
    run(&dir, &["tick", "--as-of", "2024-04-20T00:00:00Z"]);
    let ticked = run(&dir, &["tick", "--as-of", "2024-06-15T00:00:00Z"]);
    assert!(ticked["effects_produced"].as_u64().unwrap() > 0, "{ticked}");
    let defs = Definitions::load(dir.path()).unwrap();
    let mut engine = Engine::new(defs.clone());
    for (source, raws) in &calls {
        engine
            .ingest(
                source,
                raws,
                Utc.with_ymd_and_hms(2024, 4, 1, 0, 0, 0).unwrap(),
            )
            .unwrap();
    }
    engine.build(BuildOptions::at(
        Utc.with_ymd_and_hms(2024, 4, 1, 0, 0, 0).unwrap(),
    ));
    engine.tick(Utc.with_ymd_and_hms(2024, 6, 15, 0, 0, 0).unwrap());
    let mut expected = BTreeMap::new();
    for name in defs.entities.keys() {
        let mut rows: Vec<HistoryRow> =
            engine.rows(name).into_iter().cloned().map(micros).collect();
        rows.sort_by(|a, b| (&a.entity_id, a.valid_from).cmp(&(&b.entity_id, b.valid_from)));
        expected.insert(name.clone(), rows);
    }
    assert_same_history(&dir, &active_version(&dir), expected);
}

// CONTRACTS C16 (2): a Parquet record gives the same data as the JSON one — its UTC
// timestamp arrives as canonical text — so it is a duplicate of it.
#[test]
fn parquet_input_is_typed_like_json() {
    use deltalake::arrow::array::{
        Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    };
    use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;
    let dir = Dir::from_fixture("cust");
    dir.write(
        "in.jsonl",
        "{\"type\":\"signup\",\"ts\":\"2024-01-01T00:00:00Z\",\"email\":\"a@x.com\",\"phone\":555}\n",
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("type", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("email", DataType::Utf8, false),
        Field::new("phone", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["signup"])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![1_704_067_200_000_000]).with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec!["a@x.com"])),
            Arc::new(Int64Array::from(vec![555])),
        ],
    )
    .unwrap();
    let file = std::fs::File::create(dir.path().join("in.parquet")).unwrap();
    let mut writer = deltalake::parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    run(&dir, &["ingest", "--source", "app", "in.jsonl"]);
    run(&dir, &["ingest", "--source", "app", "in.parquet"]);
    let n = run(&dir, &["normalize"]);
    assert_eq!(
        (
            n["events_ingested"].as_u64(),
            n["duplicates_skipped"].as_u64()
        ),
        (Some(1), Some(1)),
        "{n}"
    );
}

// Issue 4 bad input: malformed lines and wrong cells go to the dead letters with their line;
// the rest of the file is ingested; a file sink receives EventFailure lines; --max-failures
// gives exit status 3.
#[test]
fn bad_records_go_to_the_dead_letters_and_the_rest_proceeds() {
    let dir = Dir::from_fixture("cust");
    let sink = dir.path().join("dead/letters.jsonl");
    let sink_arg = format!("file:{}", sink.display());
    dir.write(
        "mixed.jsonl",
        "{\"type\":\"signup\",\"ts\":\"2024-01-01T00:00:00Z\",\"email\":\"a@x.com\"}\n{not json\n[1,2]\n{\"type\":\"signup\",\"ts\":\"2024-01-02T00:00:00Z\",\"email\":\"b@x.com\"}\n{\"type\":\"upgrade\",\"ts\":\"2024-01-03T00:00:00Z\",\"email\":\"a@x.com\",\"mrr\":\"lots\"}\n",
    );
    dir.write(
        "ragged.csv",
        "type,ts,email\nsignup,2024-01-04T00:00:00Z,c@x.com\nsignup,2024-01-05T00:00:00Z\n",
    );
    let out = run(
        &dir,
        &[
            "--dead-letter",
            &sink_arg,
            "ingest",
            "--source",
            "app",
            "mixed.jsonl",
        ],
    );
    assert_eq!(
        (out["records"].as_u64(), out["malformed"].as_u64()),
        (Some(3), Some(2)),
        "{out}"
    );
    assert!(
        out["failures"][0]["error"]
            .as_str()
            .unwrap()
            .contains("line 2"),
        "{out}"
    );
    let out = run(
        &dir,
        &[
            "--dead-letter",
            &sink_arg,
            "ingest",
            "--source",
            "app",
            "ragged.csv",
        ],
    );
    assert_eq!(
        (out["records"].as_u64(), out["malformed"].as_u64()),
        (Some(1), Some(1)),
        "{out}"
    );
    let normalize = TestCommand::new(&dir)
        .args([
            "--dead-letter",
            &sink_arg,
            "normalize",
            "--max-failures",
            "0",
        ])
        .run();
    normalize.assert_code(3);
    let n: Json = serde_json::from_str(&normalize.stdout).unwrap();
    assert_eq!(
        (n["events_ingested"].as_u64(), n["events_failed"].as_u64()),
        (Some(3), Some(1)),
        "{n}"
    );
    let letters: Vec<Json> = std::fs::read_to_string(&sink)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 4, "{letters:#?}");
    assert!(letters.iter().all(|l| l.get("stage").is_some()
        && l.get("error").is_some()
        && l.get("recoverable").is_some()));
    assert!(letters[3]["error"]
        .as_str()
        .unwrap()
        .contains("Type coercion failed for field 'mrr'"));
    let b = run(&dir, &["build", "--as-of", "2024-01-10T00:00:00Z"]);
    assert_eq!(b["entities_created"], 3, "{b}");
    let bad_sink = TestCommand::new(&dir)
        .args(["--dead-letter", "kafka:topic", "normalize"])
        .run();
    bad_sink.assert_code(2);
}

// Issue 4 bad input: a 10 MB single event is stored and normalized, not lost.
#[test]
fn a_ten_megabyte_event_is_handled() {
    let dir = Dir::from_fixture("cust");
    let big = "x".repeat(10 * 1024 * 1024);
    dir.write(
        "big.jsonl",
        &format!("{{\"type\":\"signup\",\"ts\":\"2024-01-01T00:00:00Z\",\"email\":\"a@x.com\",\"note\":\"{big}\"}}\n{{\"type\":\"signup\",\"ts\":\"2024-01-02T00:00:00Z\",\"email\":\"b@x.com\"}}\n"),
    );
    let out = run(&dir, &["ingest", "--source", "app", "big.jsonl"]);
    assert_eq!(out["records"], 2);
    let n = run(&dir, &["normalize"]);
    assert_eq!(n["events_ingested"], 2, "{n}");
    let b = run(&dir, &["build", "--as-of", "2024-01-10T00:00:00Z"]);
    assert_eq!(b["entities_created"], 2, "{b}");
}

// The seed's identity and ledger inspection (RESULTS.md §8), after CONTRACTS D5's merge.
#[test]
fn identity_and_ledger_inspection() {
    let dir = Dir::from_fixture("cust");
    dir.write(
        "s5.jsonl",
        "{\"type\":\"signup\",\"ts\":\"2024-01-01T10:00:00Z\",\"email\":\"a@x.com\"}\n{\"type\":\"signup\",\"ts\":\"2024-01-02T10:00:00Z\",\"phone\":\"555\"}\n{\"type\":\"link\",\"ts\":\"2024-01-03T10:00:00Z\",\"email\":\"a@x.com\",\"phone\":\"555\"}\n",
    );
    run(&dir, &["ingest", "--source", "app", "s5.jsonl"]);
    run(&dir, &["normalize"]);
    assert_eq!(
        run(&dir, &["build", "--as-of", "2024-01-04T00:00:00Z"])["merges_detected"],
        1
    );
    let ea = "fbf2ddb4-0443-8ffd-afe7-93b0897586b9";
    // CONTRACTS D9 (lookup of both keys after the merge)
    assert_eq!(
        run(&dir, &["identity", "lookup", "555", "--format", "json"])["entity_id"],
        ea
    );
    assert_eq!(
        run(&dir, &["identity", "lookup", "a@x.com", "--format", "json"])["entity_id"],
        ea
    );
    let hints = run(&dir, &["identity", "hints", ea, "--format", "json"]);
    assert_eq!(
        hints,
        serde_json::json!({"email": ["a@x.com"], "phone": ["555"]})
    );
    assert_eq!(
        run(&dir, &["ledger", "count", "--format", "json"])["count"],
        3
    );
    assert_eq!(
        run(
            &dir,
            &["ledger", "count", "--source", "billing", "--format", "json"]
        )["count"],
        0
    );
    let events = run(&dir, &["ledger", "events", ea, "--format", "json"]);
    let types: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["signup", "signup", "link"],
        "the loser's events are the winner's too (§5.4)"
    );
    let list = TestCommand::new(&dir)
        .args(["identity", "list", "--format", "csv"])
        .run();
    list.assert_code(0);
    assert!(
        list.stdout
            .starts_with("entity_type,hint_type,hint_value,entity_id\n"),
        "{}",
        list.stdout
    );
    assert_eq!(list.stdout.lines().count(), 3);
}

// Issue 4: incremental runs over 10 ingests equal one full build, and `maintain` (compaction,
// checkpoint, vacuum) leaves every table readable with the same rows.
on_both!(ten_incremental_ingests_equal_one_full_build);
fn ten_incremental_ingests_equal_one_full_build(backend: Backend) {
    let dir = showcase(backend);
    let app = lines(&dir.path().join("data/app.jsonl"));
    let mut calls = Vec::new();
    for i in 0..10 {
        let part = app[app.len() * i / 10..app.len() * (i + 1) / 10].to_vec();
        let file = dir.path().join(format!("part{i}.jsonl"));
        std::fs::write(
            &file,
            part.iter()
                .map(|r| r.to_string() + "\n")
                .collect::<String>(),
        )
        .unwrap();
        run(&dir, &["ingest", "--source", "app", file.to_str().unwrap()]);
        run(&dir, &["normalize"]);
        run(&dir, &["build", "--as-of", AS_OF]);
        calls.push(("app", part));
    }
    let version = active_version(&dir);
    let incremental = lake_history(&dir, &version);
    run(&dir, &["build", "--full", "--as-of", AS_OF]);
    assert_eq!(lake_history(&dir, &version), incremental);
    let builds: Vec<usize> = (0..10).collect();
    assert_same_history(&dir, &version, engine_history(&dir, &calls, &builds));
    run(&dir, &["maintain", "--retention-hours", "0"]);
    assert_eq!(lake_history(&dir, &version), incremental);
    assert_eq!(run(&dir, &["build", "--as-of", AS_OF])["mode"], "SKIP");
}

/// Writes `users` synthetic showcase events to `name`: for user i, a signup (`kind` "signup") or
/// a profile update, at 2024-01-01 + i·20 s + `offset` s.
fn synthetic_events(dir: &Dir, name: &str, kind: &str, offset: i64, users: usize) -> PathBuf {
    let line = |i: usize| {
        let ts = chrono::DateTime::from_timestamp(1_704_067_200 + i as i64 * 20 + offset, 0)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ");
        let user = 100_000 + i;
        match kind {
            "signup" => format!(
                r#"{{"event":"signed_up","occurred_at":"{ts}","message_id":"s{i}","userId":{user},"traits":{{"email":"user{i}@late.example"}},"context":{{"channel":"ads"}}}}"#
            ),
            _ => format!(
                r#"{{"event":"profile_updated","occurred_at":"{ts}","message_id":"p{offset}-{i}","userId":{user},"traits":{{"email":"user{i}@late.example","company":"co{offset}"}}}}"#
            ),
        }
    };
    let path = dir.path().join(name);
    let text: String = (0..users).map(|i| line(i) + "\n").collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn ingest_and_build(dir: &Dir, file: &Path, as_of: &str) -> Json {
    run(dir, &["ingest", "--source", "app", file.to_str().unwrap()]);
    run(dir, &["normalize"]);
    run(dir, &["build", "--as-of", as_of])
}

// An increment whose late arrivals rebuild thousands of entities: their rows are picked out of
// scans and their history files rewritten (an SQL IN list of that many ids overflowed the
// stack in the Delta scan's predicate conversion), and the result equals a full build.
#[test]
fn thousands_of_late_arrivals_rebuild_in_one_increment() {
    let dir = showcase(Backend::Sqlite);
    let users = 3_000;
    ingest_and_build(
        &dir,
        &synthetic_events(&dir, "signups.jsonl", "signup", 0, users),
        AS_OF,
    );
    // Every update falls between two signups: before the watermark, so every customer is
    // rebuilt.
    let build = ingest_and_build(
        &dir,
        &synthetic_events(&dir, "up.jsonl", "update", 10, users),
        AS_OF,
    );
    assert_eq!(build["mode"], "INCREMENTAL", "{build}");
    assert!(
        build["late_arrivals"].as_u64().unwrap() >= users as u64 - 1,
        "{build}"
    );
    let version = active_version(&dir);
    let incremental = lake_history(&dir, &version);
    run(&dir, &["build", "--full", "--as-of", AS_OF]);
    assert_eq!(lake_history(&dir, &version), incremental);
}

// An entity whose old rows are read in several batches keeps every one of them when an
// increment appends to its history: rows were once grouped batch by batch, which kept only
// the last batch's rows of an entity. (`maintain` compacts the history into files holding
// both current and closed rows, which an increment reads whole.)
#[test]
fn a_long_history_read_in_several_batches_keeps_every_row() {
    let dir = showcase(Backend::Sqlite);
    let event = |n: usize, secs: i64| {
        let ts = chrono::DateTime::from_timestamp(1_704_067_200 + secs, 0)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ");
        let head = if n == 0 {
            r#""event":"signed_up","traits":{"email":"long@history.example"},"context":{"channel":"ads"}"#.to_string()
        } else {
            format!(
                r#""event":"profile_updated","traits":{{"email":"long@history.example","company":"co{n}"}}"#
            )
        };
        format!(r#"{{{head},"occurred_at":"{ts}","message_id":"h{n}","userId":7}}"#) + "\n"
    };
    let first = dir.path().join("long.jsonl");
    std::fs::write(
        &first,
        (0..3_000)
            .map(|n| event(n, n as i64 * 60))
            .collect::<String>(),
    )
    .unwrap();
    ingest_and_build(&dir, &first, AS_OF);
    run(&dir, &["maintain", "--retention-hours", "0"]);
    let later = dir.path().join("later.jsonl");
    std::fs::write(&later, event(5_000, 130 * 86_400)).unwrap();
    let as_of = "2024-06-01T00:00:00Z";
    let build = ingest_and_build(&dir, &later, as_of);
    assert_eq!(build["mode"], "INCREMENTAL", "{build}");
    assert_eq!(build["late_arrivals"], 0, "{build}");
    let version = active_version(&dir);
    let incremental = lake_history(&dir, &version);
    assert!(incremental.values().map(Vec::len).sum::<usize>() > 3_000);
    run(&dir, &["build", "--full", "--as-of", as_of]);
    assert_eq!(lake_history(&dir, &version), incremental);
}

// An increment that only appends to histories rewrites the files of current rows and adds
// files of closed ones: no file of closed rows is removed, and the history equals a full
// build's.
#[test]
fn an_appending_increment_leaves_closed_history_files_in_place() {
    let dir = showcase(Backend::Sqlite);
    let users = 500;
    run(
        &dir,
        &[
            "ingest",
            "--source",
            "app",
            synthetic_events(&dir, "s.jsonl", "signup", 0, users)
                .to_str()
                .unwrap(),
        ],
    );
    ingest_and_build(
        &dir,
        &synthetic_events(&dir, "u1.jsonl", "update", 10, users),
        AS_OF,
    );
    // After every time rule instant the first build reached (it ran to AS_OF).
    let later = synthetic_events(&dir, "u2.jsonl", "update", 130 * 86_400, users);
    let build = ingest_and_build(&dir, &later, "2024-06-01T00:00:00Z");
    assert_eq!(build["mode"], "INCREMENTAL", "{build}");
    assert_eq!(build["late_arrivals"], 0, "{build}");

    let version = active_version(&dir);
    let log = dir.path().join(format!(
        ".defacto/lake/state/{version}/customer_history/_delta_log"
    ));
    let mut commits: Vec<PathBuf> = std::fs::read_dir(&log)
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension() == Some("json".as_ref()))
        .collect();
    commits.sort();
    let actions = |commit: &Path| -> Vec<Json> {
        std::fs::read_to_string(commit)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (last, earlier) = commits.split_last().unwrap();
    let closed: BTreeSet<String> = earlier
        .iter()
        .flat_map(|c| actions(c))
        .filter(|a| a["add"]["tags"]["defacto.rows"] == "closed")
        .map(|a| a["add"]["path"].as_str().unwrap().to_string())
        .collect();
    assert!(!closed.is_empty(), "the first build wrote closed rows");
    let removed: Vec<String> = actions(last)
        .iter()
        .filter_map(|a| a["remove"]["path"].as_str().map(str::to_string))
        .collect();
    assert!(!removed.is_empty(), "the current rows' file is rewritten");
    assert!(
        removed.iter().all(|p| !closed.contains(p)),
        "closed files stay: {removed:?}"
    );

    let incremental = lake_history(&dir, &version);
    run(
        &dir,
        &["build", "--full", "--as-of", "2024-06-01T00:00:00Z"],
    );
    assert_eq!(lake_history(&dir, &version), incremental);
}

// CONTRACTS G13 (storage): a `datetime`-coerced field is a DateTime when events are replayed
// from the ledger in a later process, so the same compute works in every build [FIX E2].
#[test]
fn datetime_fields_keep_their_kind_in_the_ledger() {
    let dir = Dir::from_fixture("cust");
    dir.edit(
        "entities/customer.yaml",
        "    score:  { type: integer }\n",
        "    score:  { type: integer }\n    since:  { type: datetime }\n",
    );
    dir.edit(
        "entities/customer.yaml",
        "            - { set: { property: email, from: event.email } }\n",
        "            - { set: { property: email, from: event.email } }\n            - { set: { property: since, compute: \"date_trunc(event.dt, 'month')\" } }\n",
    );
    dir.edit(
        "sources/app.yaml",
        "signup:  { mappings: { email: { from: email }, phone: { from: phone } }",
        "signup:  { mappings: { email: { from: email }, phone: { from: phone }, dt: { from: dt, type: datetime } }",
    );
    dir.write(
        "e.jsonl",
        "{\"type\":\"signup\",\"ts\":\"2024-01-01T00:00:00Z\",\"email\":\"a@x.com\",\"dt\":\"2023-05-17T08:00:00Z\"}\n",
    );
    run(&dir, &["ingest", "--source", "app", "e.jsonl"]);
    run(&dir, &["normalize"]);
    for full in [false, true] {
        let mut args = vec!["build", "--as-of", "2024-01-10T00:00:00Z"];
        if full {
            args.push("--full");
        }
        let b = run(&dir, &args);
        assert_eq!(b["events_failed"], 0, "{b}");
        let rows = run(&dir, &["table", "customer", "--format", "json"]);
        assert_eq!(rows[0]["since"], "2023-05-01T00:00:00Z", "{rows}");
    }
}

// CONTRACTS C14 (storage): ledger/raw keeps each record exactly as received, unmapped
// fields included.
#[test]
fn the_raw_ledger_keeps_records_as_received() {
    let dir = Dir::from_fixture("cust");
    let record = r#"{"type":"signup","ts":"2024-01-01T00:00:00Z","email":"a@x.com","utm":{"x":[1,2.5,null]},"extra":"kept"}"#;
    dir.write("r.jsonl", &format!("{record}\n"));
    run(&dir, &["ingest", "--source", "app", "r.jsonl"]);
    let lake = lake_of(&dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let batches = rt
        .block_on(lake.query_all(
            &[("raw", tables::RAW, defacto_jobs::ledger::RAW_SCHEMA.clone())],
            "SELECT sequence, call, source, raw FROM raw",
        ))
        .unwrap();
    let rows = defacto_jobs::ledger::read_raw(&batches[0]).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].sequence, rows[0].call, rows[0].source.as_str()),
        (1, 1, "app")
    );
    let stored: Json = serde_json::from_str(&rows[0].raw).unwrap();
    assert_eq!(stored, serde_json::from_str::<Json>(record).unwrap());
}

/// Runs `defacto` with debug logs; returns its result JSON and its log.
fn run_logged(dir: &Dir, args: &[&str]) -> (Json, String) {
    let out = TestCommand::new(dir)
        .args(args)
        .env("DEFACTO_LOG_LEVEL", "debug")
        .run();
    out.assert_code(0);
    let result =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    // Without the terminal colour codes around field names and values.
    let mut log = String::new();
    let mut rest = out.stderr.as_str();
    while let Some(start) = rest.find('\u{1b}') {
        log.push_str(&rest[..start]);
        rest = &rest[start..];
        rest = &rest[rest.find('m').map_or(rest.len(), |end| end + 1)..];
    }
    log.push_str(rest);
    (result, log)
}

// An incremental resolve and build load only the identity their new events reach: a merge of
// two stored entities, a key of a merged-away entity, and a `relate` to a customer that no new
// event's hints reach (loaded when the build finds it missing, then built again) all come out
// as a full build makes them.
on_both!(increments_load_only_the_identity_they_reach);
fn increments_load_only_the_identity_they_reach(backend: Backend) {
    let dir = Dir::from_fixture("cust").on(backend);
    // An order resolves only to itself: its customer is reached by `relate` alone.
    dir.edit(
        "sources/app.yaml",
        "hints: { order: [order_id], customer: [email] }",
        "hints: { order: [order_id] }",
    );
    let app = |ty: &str, ts: &str, extra: Json| harness::app(ty, ts, extra);
    let order = |id: &str, ts: &str, email: &str| {
        serde_json::json!({"event": "order.created", "created_at": format!("2024-{ts}:00Z"),
            "id": id, "customer_email": email, "amount": 10})
        .to_string()
    };
    let ingest = |name: &str, source: &str, lines: &[String]| {
        dir.write(name, &(lines.join("\n") + "\n"));
        run(&dir, &["ingest", "--source", source, name]);
    };
    let build = |as_of: &str| {
        run(&dir, &["normalize"]);
        run_logged(
            &dir,
            &["build", "--as-of", &format!("2024-{as_of}T00:00:00Z")],
        )
    };
    let signups: Vec<String> = (0..40)
        .map(|i| {
            let ts = format!("01-01T{:02}:{:02}", 1 + i / 60, i % 60);
            app(
                "signup",
                &ts,
                serde_json::json!({"email": format!("c{i}@x.com"), "phone": format!("p{i}")}),
            )
        })
        .collect();
    ingest("signups.jsonl", "app", &signups);
    build("01-02");

    // c1's email with c2's phone: the two stored customers merge.
    ingest(
        "link.jsonl",
        "app",
        &[app(
            "link",
            "01-03T10:00",
            serde_json::json!({"email": "c1@x.com", "phone": "p2"}),
        )],
    );
    ingest(
        "orders.jsonl",
        "billing",
        &[order("o1", "01-03T11:00", "c3@x.com")],
    );
    let (built, log) = build("01-04");
    assert_eq!(built["mode"], "INCREMENTAL");
    assert_eq!(built["merges_detected"], 1);
    assert!(log.contains("whole=false"), "{log}");
    assert!(
        log.contains("identity read outside the loaded part: loading it and building again"),
        "{log}"
    );

    // The merged-away customer's email, and an order of the winner.
    ingest(
        "more.jsonl",
        "app",
        &[
            app(
                "upgrade",
                "01-05T10:00",
                serde_json::json!({"email": "C2@x.com", "plan": "pro", "mrr": 5}),
            ),
            app(
                "login",
                "01-05T11:00",
                serde_json::json!({"email": "c1@x.com"}),
            ),
        ],
    );
    ingest(
        "orders2.jsonl",
        "billing",
        &[order("o2", "01-05T12:00", "c2@x.com")],
    );
    let (built, _) = build("01-06");
    assert_eq!(built["mode"], "INCREMENTAL");

    let tables = |dir: &Dir| -> Vec<Json> {
        ["customer_history", "order_history", "rel_placed_by_history"]
            .iter()
            .map(|t| {
                let sql = format!("SELECT * FROM {t} ORDER BY 1, valid_from");
                run(dir, &["query", &sql, "--format", "json"])
            })
            .collect()
    };
    let incremental = tables(&dir);
    let placed_by = incremental[2].as_array().unwrap();
    assert_eq!(placed_by.len(), 2, "{placed_by:?}");
    let rebuilt = run(
        &dir,
        &["build", "--full", "--as-of", "2024-01-06T00:00:00Z"],
    );
    assert_eq!(rebuilt["mode"], "FULL");
    assert_eq!(tables(&dir), incremental);
}
