//! End-to-end tests of the `defacto` binary: given these files, this command prints that.

mod harness;

use harness::{fixture, Dir, TestCommand};

#[test]
fn validate_reports_valid_definitions_with_their_warnings() {
    let dir = Dir::from_fixture("cust");
    let out = TestCommand::new(&dir).args(["validate"]).run();
    out.assert_code(0);
    assert!(
        out.stdout
            .contains("warning: entities/customer.yaml: customer.states.churned: "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.ends_with("valid (0 errors, 7 warnings)\n"),
        "{}",
        out.stdout
    );
}

#[test]
fn validate_names_file_definition_and_path_and_exits_1() {
    let dir = Dir::from_fixture("cust");
    dir.edit(
        "entities/customer.yaml",
        "- { transition: { to: churned } }",
        "- { transition: { to: actve } }",
    );
    let out = TestCommand::new(&dir).args(["validate"]).run();
    out.assert_code(1);
    assert!(
        out.stdout.contains("error: entities/customer.yaml: customer.states.active.when.cancel.effects[0].transition.to: unknown state 'actve'\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("invalid (1 error, "), "{}", out.stdout);
}

// RESULTS.md §8: ValidationResult as JSON.
#[test]
fn validate_json_prints_the_validation_result() {
    let dir = Dir::from_fixture("min");
    dir.edit("sources/s.yaml", "hints: { thing: [key] }", "hints: {}");
    let out = TestCommand::new(&dir)
        .args(["validate", "--format", "json"])
        .run();
    out.assert_code(1);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 1);
    assert!(v["errors"][0]
        .as_str()
        .unwrap()
        .contains("must have at least one identity hint"));
    assert!(v["warnings"].is_array());
}

#[test]
fn validate_reports_malformed_yaml_with_line_and_column() {
    let dir = Dir::from_fixture("min");
    dir.write(
        "entities/thing.yaml",
        "thing:\n  starts: new\n  identity: [unclosed\n",
    );
    let out = TestCommand::new(&dir).args(["validate"]).run();
    out.assert_code(1);
    assert!(
        out.stdout.contains("error: entities/thing.yaml: line "),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("column"), "{}", out.stdout);
}

#[test]
fn config_comes_from_the_environment_and_the_flag_wins() {
    let good = Dir::from_fixture("min");
    let bad = Dir::from_fixture("min");
    bad.edit("sources/s.yaml", "hints: { thing: [key] }", "hints: {}");
    let out = TestCommand::new(&good)
        .env("DEFACTO_CONFIG", bad.path())
        .args(["validate"])
        .run();
    out.assert_code(1);
    let out = TestCommand::new(&good)
        .env("DEFACTO_CONFIG", bad.path())
        .arg("--config")
        .arg(good.path())
        .args(["validate"])
        .run();
    out.assert_code(0);
}

#[test]
fn result_file_receives_the_result_json() {
    let dir = Dir::from_fixture("min");
    let target = dir.path().join("xcom/return.json");
    let out = TestCommand::new(&dir)
        .arg("--result-file")
        .arg(&target)
        .args(["validate"])
        .run();
    out.assert_code(0);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(target).unwrap()).unwrap();
    assert_eq!(v["valid"], true);
}

#[test]
fn bad_usage_exits_2() {
    let dir = Dir::from_fixture("min");
    let out = TestCommand::new(&dir)
        .args(["validate", "--format", "xml"])
        .run();
    out.assert_code(2);
    let out = TestCommand::new(&dir).args(["no-such-command"]).run();
    out.assert_code(2);
}

#[test]
fn a_missing_config_folder_is_a_configuration_error() {
    let dir = Dir::from_fixture("min");
    let out = TestCommand::new(&dir)
        .args(["--config", "no/such/folder", "validate"])
        .run();
    out.assert_code(2);
    assert!(
        out.stderr.contains("ConfigError") && out.stderr.contains("no/such/folder"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_examples_are_valid() {
    for example in ["quickstart", "showcase"] {
        let path = fixture::repo_root().join("examples").join(example);
        let dir = Dir::from_fixture("min");
        let out = TestCommand::new(&dir)
            .arg("--config")
            .arg(&path)
            .args(["validate"])
            .run();
        out.assert_code(0);
    }
}
