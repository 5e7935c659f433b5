//! Definition versions through the command line: registration, blue/green activation,
//! drafts (CONTRACTS A16–A20).

mod harness;

use harness::{run, Dir, TestCommand};

const S1: &str = "{\"type\":\"signup\",\"ts\":\"2024-01-01T10:00:00Z\",\"email\":\"Alice@X.com\"}\n\
{\"type\":\"upgrade\",\"ts\":\"2024-01-02T10:00:00Z\",\"email\":\"alice@x.com\",\"plan\":\"pro\",\"mrr\":\"49\"}\n\
{\"type\":\"login\",\"ts\":\"2024-01-03T10:00:00Z\",\"email\":\"alice@x.com\",\"n\":1}\n";

const AS_OF: &str = "--as-of=2024-01-10T00:00:00Z";

/// CUST with S1 ingested, normalized and built: version V1, active.
fn s1_built() -> (Dir, String) {
    let dir = Dir::from_fixture("cust");
    dir.write("s1.jsonl", S1);
    run(&dir, &["ingest", "--source", "app", "s1.jsonl"]);
    run(&dir, &["normalize"]);
    run(&dir, &["build", AS_OF]);
    let v1 = run(&dir, &["status"])["version"]
        .as_str()
        .unwrap()
        .to_string();
    (dir, v1)
}

fn first_plan(dir: &Dir) -> String {
    let rows = run(dir, &["table", "customer", "--history", "--format", "json"]);
    rows[0]["plan"].as_str().unwrap().to_string()
}

fn versions(dir: &Dir) -> Vec<(String, bool)> {
    run(dir, &["definitions", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap().to_string(),
                v["active"].as_bool().unwrap(),
            )
        })
        .collect()
}

// CONTRACTS A17, CONTRACTS A20
#[test]
fn a_new_version_is_built_beside_the_active_one_and_switched_blue_green() {
    let (dir, v1) = s1_built();
    assert_eq!(v1.len(), 8);
    run(&dir, &["status"]);
    assert_eq!(
        versions(&dir),
        [(v1.clone(), true)],
        "loading the same definitions adds no version"
    );
    dir.edit("entities/customer.yaml", "default: free", "default: basic");
    let v2 = run(&dir, &["status"])["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(v2, v1);
    assert_eq!(versions(&dir), [(v1.clone(), true), (v2.clone(), false)]);
    let refused = TestCommand::new(&dir)
        .args(["definitions", "activate", &v2])
        .run();
    refused.assert_code(2);
    assert!(
        refused.stderr.contains("has no completed build"),
        "{}",
        refused.stderr
    );
    assert_eq!(versions(&dir), [(v1.clone(), true), (v2.clone(), false)]);
    assert_eq!(first_plan(&dir), "free");
    let built = run(&dir, &["build", AS_OF]);
    assert_eq!(built["mode"], "FULL", "{built}");
    assert_eq!(versions(&dir), [(v1.clone(), false), (v2.clone(), true)]);
    assert_eq!(first_plan(&dir), "basic");
    run(&dir, &["definitions", "activate", &v1]);
    assert_eq!(versions(&dir), [(v1.clone(), true), (v2.clone(), false)]);
    assert_eq!(first_plan(&dir), "free", "V1's tables still hold V1's rows");

    // The inactive version's time rules run with `tick --version`; the active one's stay.
    let state = |dir: &Dir| {
        run(dir, &["table", "customer", "--format", "json"])[0]["customer_state"].clone()
    };
    let ticked = run(
        &dir,
        &["tick", "--version", &v2, "--as-of=2024-03-01T00:00:00Z"],
    );
    assert_eq!(ticked["transitions"], 2, "{ticked}");
    assert_eq!(state(&dir), "active", "the active version is not ticked");
    run(&dir, &["definitions", "activate", &v2]);
    assert_eq!(state(&dir), "churned");
    let unknown = TestCommand::new(&dir)
        .args(["tick", "--version", "nope"])
        .run();
    unknown.assert_code(1);
    assert!(
        unknown
            .stderr
            .contains("NotFoundError: Unknown definition version 'nope'"),
        "{}",
        unknown.stderr
    );
}

// CONTRACTS A16: register + build --version of an entity-only change is FULL (not
// FULL_RENORMALIZE), the customer keeps its id, and the new version becomes active.
#[test]
fn register_then_build_a_named_version() {
    let (dir, _v1) = s1_built();
    let v2_dir = Dir::from_fixture("cust");
    v2_dir.edit("entities/customer.yaml", "default: free", "default: basic");
    let reg = run(
        &dir,
        &[
            "definitions",
            "register",
            "v2",
            v2_dir.path().to_str().unwrap(),
        ],
    );
    assert_eq!(reg["build_mode"], "FULL", "{reg}");
    assert_eq!(
        reg["changes"]["modified"]["customer"],
        serde_json::json!({}),
        "{reg}"
    );
    let refused = TestCommand::new(&dir)
        .args(["definitions", "activate", "v2"])
        .run();
    refused.assert_code(2);
    assert!(refused.stderr.contains("ConfigError"), "{}", refused.stderr);
    let built = run(&dir, &["build", "--version", "v2", AS_OF]);
    assert_eq!(built["mode"], "FULL", "{built}");
    let rows = run(
        &dir,
        &["table", "customer", "--history", "--format", "json"],
    );
    assert_eq!(
        rows[0]["customer_id"],
        "977754ef-7546-8aa8-a601-f6954a4aa7e2"
    );
    assert_eq!(rows[0]["plan"], "basic");
    let current = run(&dir, &["table", "customer", "--format", "json"]);
    assert_eq!(current[0]["plan"], "pro");
}

// CONTRACTS A18
#[test]
fn version_errors() {
    let dir = Dir::from_fixture("cust");
    let out = TestCommand::new(&dir).args(["table", "customer"]).run();
    out.assert_code(2);
    assert!(
        out.stderr.contains("No active definition version"),
        "{}",
        out.stderr
    );
    let (dir, v1) = s1_built();
    let again = TestCommand::new(&dir)
        .args(["definitions", "register", &v1, dir.path().to_str().unwrap()])
        .run();
    again.assert_code(1);
    assert!(
        again.stderr.contains("DefinitionError") && again.stderr.contains("already exists"),
        "{}",
        again.stderr
    );
    let nope = TestCommand::new(&dir)
        .args(["definitions", "activate", "nope"])
        .run();
    nope.assert_code(1);
    assert!(nope.stderr.contains("NotFoundError"), "{}", nope.stderr);
}

// CONTRACTS A19 through the command line: drafts persist between invocations.
#[test]
fn drafts_on_the_command_line() {
    let (dir, v1) = s1_built();
    run(
        &dir,
        &["definitions", "draft", "v2", "create", "--based-on", &v1],
    );
    let impact = run(&dir, &["definitions", "draft", "v2", "impact"]);
    assert_eq!(
        impact,
        serde_json::json!({"build_mode": "INCREMENTAL", "reason": "no definition changes"})
    );
    run(
        &dir,
        &[
            "definitions",
            "draft",
            "v2",
            "add-property",
            "customer",
            "ltv",
            "{\"type\":\"number\",\"default\":0}",
        ],
    );
    let impact = run(&dir, &["definitions", "draft", "v2", "impact"]);
    assert_eq!(impact["build_mode"], "FULL");
    assert_eq!(impact["reason"], "entity definitions changed");
    let diff = run(&dir, &["definitions", "draft", "v2", "diff"]);
    assert_eq!(
        diff["modified"]["customer"]["added_properties"],
        serde_json::json!(["ltv"])
    );
    let dup = TestCommand::new(&dir)
        .args([
            "definitions",
            "draft",
            "v2",
            "add-property",
            "customer",
            "ltv",
            "{\"type\":\"number\"}",
        ])
        .run();
    dup.assert_code(1);
    assert!(dup.stderr.contains("already exists"), "{}", dup.stderr);
    run(&dir, &["definitions", "draft", "id", "create"]);
    run(
        &dir,
        &[
            "definitions",
            "draft",
            "id",
            "update-identity",
            "customer",
            "{\"email\":{\"match\":\"exact\"}}",
        ],
    );
    assert_eq!(
        run(&dir, &["definitions", "draft", "id", "impact"])["build_mode"],
        "FULL_WITH_IDENTITY_RESET"
    );
    let valid = run(&dir, &["definitions", "draft", "v2", "validate"]);
    assert_eq!(valid["valid"], true, "{valid}");
    let reg = run(&dir, &["definitions", "draft", "v2", "register"]);
    assert_eq!(reg["version"], "v2");
    assert!(versions(&dir)
        .iter()
        .any(|(v, active)| v == "v2" && !active));
    let shown = run(&dir, &["definitions", "show", "v2"]);
    assert_eq!(
        shown["entities"]["customer"]["properties"]["ltv"]["type"],
        "number"
    );
}
