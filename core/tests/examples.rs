//! The example projects run through the in-memory engine, compared with the outcomes their
//! READMEs state (worked out independently of this engine).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use defacto_core::definitions::Definitions;
use defacto_core::engine::{BuildOptions, Engine};
use serde_json::Value as Json;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// Ingests every `data/<source>.jsonl` (one call per file; unparseable lines are skipped the
/// way `ingest` sends them to dead letters) and builds as of 2024-05-01.
fn run(name: &str) -> (Engine, u64) {
    let dir = example(name);
    let mut engine = Engine::new(Definitions::load(&dir).expect("valid example"));
    let as_of = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut failed = 0;
    for file in files {
        let source = file.file_stem().unwrap().to_string_lossy().into_owned();
        let raws: Vec<Json> = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        failed += engine.ingest(&source, &raws, as_of).unwrap().events_failed;
    }
    let result = engine.build(BuildOptions::at(as_of));
    assert!(result.failures.is_empty(), "{:#?}", result.failures);
    (engine, failed)
}

fn current_states(engine: &Engine, entity_type: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (key, h) in &engine.history {
        if key.0 == entity_type {
            if let Some(row) = h.current() {
                *counts.entry(row.state.clone()).or_insert(0) += 1;
            }
        }
    }
    counts
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn quickstart_ends_as_its_readme_says() {
    let (engine, failed) = run("quickstart");
    assert_eq!(failed, 0);
    assert_eq!(
        current_states(&engine, "ticket"),
        counts(&[("closed", 55), ("pending", 3), ("open", 2)])
    );
}

#[test]
fn showcase_ends_as_its_readme_says() {
    let (engine, failed) = run("showcase");
    assert_eq!(failed, 2, "one malformed event per file");
    assert_eq!(
        current_states(&engine, "customer"),
        counts(&[
            ("active", 27),
            ("churned", 6),
            ("expired", 5),
            ("lost", 5),
            ("at_risk", 4),
            ("trial", 3),
            ("lead", 2)
        ])
    );
    assert_eq!(
        current_states(&engine, "subscription"),
        counts(&[("active", 31), ("canceled", 7)])
    );
    assert_eq!(
        current_states(&engine, "order"),
        counts(&[("fulfilled", 13), ("refunded", 2), ("cancelled", 1)])
    );
    assert_eq!(
        engine.resolver().store().merge_log().len(),
        2,
        "two identity merges"
    );
}
