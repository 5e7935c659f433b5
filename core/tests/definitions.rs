//! Definitions: loading both forms, every validation rule (one definition that trips it, one
//! that does not), warnings, hashes and version names. Contracts of group A that need no
//! storage.

use std::fs;
use std::path::{Path, PathBuf};

use defacto_core::definitions::{
    validate_path, Definitions, NormalizedDocument, Validation, ValidationResult,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A project directory in a temp folder: a fixture copied, then files added or replaced.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn empty() -> Project {
        Project {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn from_fixture(name: &str) -> Project {
        let p = Project::empty();
        copy_dir(&Path::new(FIXTURES).join(name), p.path());
        p
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, rel: &str, text: &str) -> &Project {
        let path = self.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
        self
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path().join(rel)).unwrap()
    }

    /// Replaces one exact piece of text in a file; the piece must be there.
    fn edit(&self, rel: &str, from: &str, to: &str) -> &Project {
        let text = self.read(rel);
        assert!(text.contains(from), "{rel} does not contain {from:?}");
        self.write(rel, &text.replacen(from, to, 1))
    }

    fn validate(&self) -> Validation {
        validate_path(self.path())
    }

    fn result(&self) -> ValidationResult {
        self.validate().result()
    }

    fn hashes(&self) -> defacto_core::definitions::Hashes {
        NormalizedDocument::of(&Definitions::load(self.path()).expect("valid")).hashes()
    }

    fn version(&self) -> String {
        NormalizedDocument::of(&Definitions::load(self.path()).expect("valid")).version_name()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target: PathBuf = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn min() -> Project {
    Project::from_fixture("min")
}

fn cust() -> Project {
    Project::from_fixture("cust")
}

/// Asserts exactly one error, containing `fragment`.
#[track_caller]
fn one_error(p: &Project, fragment: &str) {
    let r = p.result();
    assert_eq!(
        r.errors.len(),
        1,
        "expected one error with {fragment:?}, got {:?}",
        r.errors
    );
    assert!(
        r.errors[0].contains(fragment),
        "{:?} lacks {fragment:?}",
        r.errors[0]
    );
    assert!(!r.valid);
}

#[track_caller]
fn valid(p: &Project) {
    let r = p.result();
    assert!(r.valid, "unexpected errors: {:?}", r.errors);
}

#[track_caller]
fn has_error(p: &Project, fragment: &str) {
    let r = p.result();
    assert!(
        r.errors.iter().any(|e| e.contains(fragment)),
        "no error containing {fragment:?} in {:?}",
        r.errors
    );
}

const MIN_ENTITY: &str = "entities/thing.yaml";
const MIN_SOURCE: &str = "sources/s.yaml";

/// MIN with two properties `p: string`, `q: integer`, and extra effects in `make`.
fn min_with_effect(effect: &str) -> Project {
    let p = min();
    p.write(
        MIN_ENTITY,
        &format!(
            "thing:\n  starts: new\n  identity: {{ key: {{}} }}\n  properties:\n    p: {{ type: string }}\n    q: {{ type: integer }}\n  states:\n    new: {{ when: {{ make: {{ effects: [create, {effect}] }} }} }}\n"
        ),
    );
    p
}

fn min_with_property(spec: &str) -> Project {
    let p = min();
    p.write(
        MIN_ENTITY,
        &format!(
            "thing:\n  starts: new\n  identity: {{ key: {{}} }}\n  properties:\n    {spec}\n  states:\n    new: {{ when: {{ make: {{ effects: [create] }} }} }}\n"
        ),
    );
    p
}

#[test]
fn fixtures_are_valid() {
    valid(&min());
    valid(&cust());
}

// CONTRACTS A1
#[test]
fn schemas_are_read_from_events_and_schemas_folders() {
    let schema = "make: {fields: {key: {type: string, required: true}}}\n";
    let p = min();
    p.write("events/make.yaml", schema);
    valid(&p);
    let v = p.validate();
    assert!(v.definitions.unwrap().schemas.contains_key("make"));

    let p = min();
    p.write("schemas/make.yaml", schema);
    let v = p.validate();
    assert!(v.is_valid());
    assert!(v.definitions.unwrap().schemas.contains_key("make"));

    let bad = "make: {fields: {nope: {type: string, required: true}}}\n";
    let p = min();
    p.write("events/make.yaml", schema)
        .write("schemas/bad.yaml", bad);
    one_error(&p, "duplicate definition 'make'");

    let p = min();
    p.write("events/make.yaml", schema)
        .write("events/bad.yaml", bad);
    one_error(&p, "duplicate definition 'make'");
    assert!(
        Definitions::load(p.path()).is_err(),
        "loading duplicate names must fail"
    );
}

// CONTRACTS A2
#[test]
fn a_project_without_folders_is_empty_and_valid() {
    let p = Project::empty();
    let v = p.validate();
    assert!(v.is_valid());
    let defs = v.definitions.unwrap();
    assert!(defs.entities.is_empty() && defs.sources.is_empty() && defs.schemas.is_empty());
}

#[test]
fn only_yaml_files_count_and_empty_documents_are_skipped() {
    let p = min();
    p.write("entities/notes.txt", "this is not yaml: [")
        .write("entities/empty.yaml", "# nothing here\n")
        .write("sources/data.jsonl", "{\"type\": \"make\"}\n");
    valid(&p);
}

#[test]
fn files_are_read_in_name_order_and_may_hold_several_definitions() {
    let p = min();
    p.write(
        "entities/b.yml",
        "two:\n  starts: s\n  identity: {k: {}}\n  states: {s: {when: {make: {effects: [create]}}}}\none:\n  starts: s\n  identity: {k: {}}\n  states: {s: {when: {make: {effects: [create]}}}}\n",
    );
    let defs = p.validate().definitions.unwrap();
    let names: Vec<&str> = defs.entities.keys().map(String::as_str).collect();
    assert_eq!(names, ["two", "one", "thing"]);
}

// CONTRACTS A3
#[test]
fn the_start_state_must_create() {
    let p = min();
    p.edit(
        MIN_ENTITY,
        "effects: [create]",
        "effects: [{transition: {to: new}}]",
    );
    one_error(
        &p,
        "starts state 'new' has no handler with a 'create' effect",
    );
    p.edit(
        MIN_ENTITY,
        "  states:",
        "  always: {make2: {effects: [create]}}\n  states:",
    );
    one_error(
        &p,
        "starts state 'new' has no handler with a 'create' effect",
    );
}

// CONTRACTS A4
#[test]
fn every_state_must_be_reachable() {
    let p = min();
    p.edit(MIN_ENTITY, "    new:", "    orphan: {}\n    new:");
    one_error(&p, "state 'orphan' is unreachable");
    p.edit(
        MIN_ENTITY,
        "  states:",
        "  always: {reset: {effects: [{transition: {to: orphan}}]}}\n  states:",
    );
    valid(&p);
}

// CONTRACTS A5
#[test]
fn effects_must_reference_declared_states_and_properties() {
    one_error(
        &min_with_effect("{transition: {to: nowhere}}"),
        "unknown state 'nowhere'",
    );
    one_error(
        &min_with_effect("{set: {property: ghost, value: 1}}"),
        "property 'ghost' is not declared",
    );
    one_error(
        &min_with_effect("{set: {property: p, from: event.key, value: \"x\"}}"),
        "more than one value source",
    );
    one_error(
        &min_with_effect("{set: {property: p, value: 5}}"),
        "does not match type 'string'",
    );
    one_error(
        &min_with_effect("{increment: {property: p}}"),
        "cannot increment 'p'",
    );
    valid(&min_with_effect("{set: {property: q, value: true}}"));
    one_error(
        &min_with_effect("{set: {property: p, value: null}}"),
        "no value source",
    );
    valid(&min_with_effect("{set: {property: p, compute: \"null\"}}"));
    valid(&min_with_effect("{increment: {property: q, by: 2}}"));
}

// CONTRACTS A6
#[test]
fn defaults_and_allowed_values_match_their_type() {
    one_error(
        &min_with_property("x: {type: integer, default: 1.5}"),
        "does not match type 'integer'",
    );
    one_error(
        &min_with_property("x: {type: number, default: true}"),
        "does not match type 'number'",
    );
    one_error(
        &min_with_property("x: {type: string, allowed: [a, 1]}"),
        "allowed value 1",
    );
    valid(&min_with_property("x: {type: number, default: 0}"));
    valid(&min_with_property(
        "x: {type: datetime, default: \"2024-01-01T00:00:00Z\"}",
    ));
    valid(&min_with_property("x: {type: boolean, default: yes}"));
    one_error(
        &min_with_property("x: {type: integer, default: yes}"),
        "does not match type 'integer'",
    );
    one_error(&min_with_property("x: {type: text}"), "unknown type 'text'");
}

// CONTRACTS A7
#[test]
fn properties_cannot_shadow_system_columns() {
    for name in [
        "thing_id",
        "thing_state",
        "valid_from",
        "valid_to",
        "merged_into",
        "last_event_time",
        "state_entered_time",
        "created_time",
    ] {
        one_error(
            &min_with_property(&format!("{name}: {{type: string}}")),
            "collides with system column",
        );
    }
    valid(&min_with_property("thing_name: {type: string}"));
}

#[test]
fn names_must_be_identifiers() {
    one_error(
        &min_with_property("\"bad name\": {type: string}"),
        "property name 'bad name'",
    );
    let p = min();
    p.edit(MIN_ENTITY, "thing:", "\"th-ing\":")
        .edit(MIN_SOURCE, "thing: [key]", "th-ing: [key]");
    one_error(&p, "entity type name 'th-ing'");
    let p = min();
    p.edit(MIN_ENTITY, "key: {}", "\"k:ey\": {}").edit(
        MIN_SOURCE,
        "thing: [key]",
        "thing: [\"k:ey\"]",
    );
    one_error(&p, "must not contain ':'");
}

// CONTRACTS A8
#[test]
fn source_checks() {
    let p = min();
    p.edit(MIN_SOURCE, "hints: { thing: [key] }", "hints: {}");
    one_error(&p, "must have at least one identity hint");
    let p = min();
    p.edit(
        MIN_SOURCE,
        "hints: { thing: [key] }",
        "hints: { thing: [] }",
    );
    valid(&p);
    let p = min();
    p.edit(MIN_SOURCE, "{ from: key }", "{ from: key, compute: \"1\" }");
    one_error(&p, "both 'from' and 'compute'");
    let p = min();
    p.edit(MIN_SOURCE, "thing: [key]", "nobody: [key]");
    has_error(&p, "entity type 'nobody' is not defined");
    let p = min();
    p.edit(MIN_SOURCE, "thing: [key]", "thing: [other]");
    one_error(&p, "'other' is not an identity field of 'thing'");
    let p = min();
    p.edit(MIN_SOURCE, "event_type: type", "event_type: \"\"");
    one_error(&p, "'event_type' must not be empty");
    let p = min();
    p.edit(MIN_SOURCE, "timestamp: ts", "timestamp: \"\"");
    one_error(&p, "'timestamp' must not be empty");
}

#[test]
fn two_events_selecting_one_raw_type_are_an_error() {
    let p = min();
    p.edit(
        MIN_SOURCE,
        "    make:",
        "    make_too: { raw_type: make, hints: { thing: [key] } }\n    make:",
    );
    has_error(&p, "both select raw type 'make'");
}

// CONTRACTS A9
#[test]
fn relationship_checks() {
    const E: &str = "entities/customer.yaml";
    let p = cust();
    p.edit(
        E,
        "  relationships:\n    - { type: placed_by, target: customer, cardinality: belongs_to }\n",
        "",
    );
    has_error(&p, "has no inverse");
    let p = cust();
    p.edit(E, "cardinality: has_many }", "cardinality: has_many }")
        .edit(E, "cardinality: belongs_to }", "cardinality: has_many }");
    // Each side of the pair reports the mismatch.
    let r = p.result();
    assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
    assert!(r.errors.iter().all(|e| e.contains("cardinality mismatch")));
    let p = cust();
    p.edit(
        E,
        "type: placed, target: order",
        "type: \"a:b\", target: order",
    );
    one_error(&p, "must not contain ':'");
    let p = cust();
    p.edit(
        E,
        "type: placed, target: order",
        "type: placed, target: nowhere",
    );
    has_error(&p, "target entity 'nowhere' is not defined");
    let p = cust();
    p.edit(E, "cardinality: has_many }", "cardinality: lots }");
    has_error(&p, "unknown cardinality 'lots'");
}

// CONTRACTS A10
#[test]
fn schema_cross_checks_apply_once_a_schema_exists() {
    let schema = |fields: &str| format!("make: {{fields: {{ {fields} }}}}\n");
    let p = min();
    p.write(
        "schemas/make.yaml",
        &schema("key: {type: string, required: true}"),
    );
    valid(&p);
    p.write(
        "schemas/make.yaml",
        &schema("key: {type: string, required: true}, extra: {type: string, required: true}"),
    );
    one_error(&p, "requires field 'extra'");
    let p = min();
    p.write("schemas/make.yaml", &schema("key: {type: string}"))
        .edit(
            MIN_SOURCE,
            "{ key: { from: key } }",
            "{ key: { from: key }, other: { from: o } }",
        );
    one_error(&p, "'other' is not declared in schema 'make'");
    let p = min();
    p.write("schemas/make.yaml", &schema("key: {type: string}"))
        .edit(
            MIN_SOURCE,
            "    make:",
            "    poke: { hints: { thing: [key] } }\n    make:",
        );
    one_error(&p, "no schema is defined for event type 'poke'");
    let p = min();
    p.write("schemas/make.yaml", &schema("key: {type: string, min: 1}"));
    one_error(&p, "'min' constraint only applies to numeric types");
    let p = min();
    p.write(
        "schemas/make.yaml",
        &schema("key: {type: integer, regex: \"^a\"}"),
    );
    one_error(&p, "'regex' constraint only applies to string fields");
    let p = min();
    p.write("schemas/make.yaml", &schema("key: {type: text}"));
    one_error(&p, "unknown type 'text'");
}

#[test]
fn handled_event_types_need_schemas_too() {
    let p = min();
    p.write(
        "schemas/make.yaml",
        "make: {fields: {key: {type: string}}}\n",
    )
    .edit(
        MIN_ENTITY,
        "  states:",
        "  always: {ping: {effects: [create]}}\n  states:",
    );
    one_error(&p, "no schema is defined for event type 'ping'");
}

// CONTRACTS A11
#[test]
fn bad_expressions_fail_registration_naming_entity_handler_and_guard() {
    let p = min();
    p.edit(
        MIN_ENTITY,
        "make: { effects",
        "make: { guard: \"event.x >\", effects",
    );
    let r = p.result();
    assert!(!r.valid);
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    let e = &r.errors[0];
    assert!(
        e.contains("thing") && e.contains("make") && e.contains("guard"),
        "{e}"
    );
    let err = Definitions::load(p.path()).unwrap_err();
    assert!(err.message.contains("guard"), "{}", err.message);

    // An unknown function registers (with a warning) and fails only when evaluated.
    let p = min();
    p.edit(
        MIN_ENTITY,
        "make: { effects",
        "make: { guard: \"upper(event.x) == 'A'\", effects",
    );
    let r = p.result();
    assert!(r.valid, "{:?}", r.errors);
    assert!(
        r.warnings.iter().any(|w| w.contains("upper")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn every_expression_site_is_compiled() {
    for (from, to) in [
        ("key: {}", "key: { normalize: \"value +\" }"),
        (
            "make: { effects: [create] }",
            "make: { effects: [create, {set: {property: p, compute: \"(\"}}] }",
        ),
        (
            "make: { effects: [create] }",
            "make: { effects: [create, {set: {property: p, value: a, condition: \"1 +\"}}] }",
        ),
    ] {
        let p = min_with_property("p: {type: string}");
        p.edit(MIN_ENTITY, from, to);
        let r = p.result();
        assert_eq!(r.errors.len(), 1, "{from} -> {to}: {:?}", r.errors);
        assert!(r.errors[0].contains("invalid expression"), "{:?}", r.errors);
    }
    let p = min_with_property("p: {type: string, compute: \"event.\"}");
    one_error(&p, "invalid expression");
    let p = min();
    p.edit(MIN_SOURCE, "{ from: key }", "{ compute: \"'unclosed\" }");
    one_error(&p, "invalid expression");
}

// CONTRACTS A12
#[test]
fn thresholds_register_or_fail() {
    let rule = |threshold: &str| {
        let p = min();
        p.edit(
            MIN_ENTITY,
            "new: { when: { make: { effects: [create] } } }",
            &format!("new: {{ when: {{ make: {{ effects: [create] }} }}, after: [{{type: inactivity, threshold: \"{threshold}\", effects: []}}] }}"),
        );
        p.result()
    };
    for ok in ["90d", "24h", "90m", "45s", " 5d ", "+5d", "05d", "0d"] {
        assert!(rule(ok).valid, "{ok}: {:?}", rule(ok).errors);
    }
    for bad in ["5D", "1.5d", "5", "d", "-5d", "5 d", "1w"] {
        let r = rule(bad);
        assert!(!r.valid, "{bad} should fail");
        assert!(r.errors[0].contains("invalid duration"), "{:?}", r.errors);
    }
}

// CONTRACTS A13
#[test]
fn cust_has_exactly_its_seven_warnings() {
    let r = cust().result();
    assert!(r.valid, "{:?}", r.errors);
    let expect = [
        ("customer.states.churned", "dead end"),
        ("order.states.shipped", "dead end"),
        ("app.events.link", "'customer'"),
        ("billing.events.order_created", "'customer'"),
        ("customer.properties.logins", "never read"),
        ("customer.properties.score", "never read"),
        ("order.properties.total", "never read"),
    ];
    assert_eq!(r.warnings.len(), 7, "{:#?}", r.warnings);
    for (path, fragment) in expect {
        assert_eq!(
            r.warnings
                .iter()
                .filter(|w| w.contains(&format!(" {path}: ")) && w.contains(fragment))
                .count(),
            1,
            "{path} / {fragment} in {:#?}",
            r.warnings
        );
    }
}

#[test]
fn treatment_without_sensitive_warns() {
    let r = min_with_property("p: {type: string, treatment: mask}").result();
    assert!(r.valid);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("'treatment' but no 'sensitive'")),
        "{:?}",
        r.warnings
    );
    let r = min_with_property("p: {type: string, treatment: mask, sensitive: pii}").result();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

// CONTRACTS A21
#[test]
fn relate_hints_the_event_does_not_carry_warn() {
    let p = cust();
    p.edit(
        "entities/customer.yaml",
        "hints: { customer: [email] } }",
        "hints: { customer: [email, phone] } }",
    );
    let r = p.result();
    assert!(r.valid, "{:?}", r.errors);
    assert_eq!(r.warnings.len(), 8, "{:#?}", r.warnings);
    let extra: Vec<&String> = r
        .warnings
        .iter()
        .filter(|w| w.contains("relates on"))
        .collect();
    assert_eq!(extra.len(), 1);
    for word in ["order", "order_created", "billing", "customer", "phone"] {
        assert!(extra[0].contains(word), "{} lacks {word}", extra[0]);
    }
}

// CONTRACTS A14
#[test]
fn hashes_ignore_key_order_defaults_and_dropped_conditions() {
    let base = cust().hashes();
    let p = cust();
    p.edit(
        "entities/customer.yaml",
        "phone: { match: exact }",
        "phone: {}",
    )
    .edit(
        "entities/customer.yaml",
        "- { transition: { to: churned } }",
        "- { transition: { to: churned, condition: \"true\" } }",
    )
    .edit(
        "entities/customer.yaml",
        "    plan:   { type: string, default: free }",
        "    plan:   { default: free, type: string }",
    );
    assert_eq!(p.hashes(), base);

    let p = cust();
    p.edit("entities/customer.yaml", "default: free", "default: basic");
    let h = p.hashes();
    assert_ne!(h.definition_hash, base.definition_hash);
    assert_eq!(h.source_hash, base.source_hash);
    assert_eq!(h.identity_hash, base.identity_hash);

    let p = cust();
    p.edit(
        "entities/customer.yaml",
        "normalize: \"str::to_lowercase(value)\"",
        "normalize: \"str::trim(str::to_lowercase(value))\"",
    );
    let h = p.hashes();
    assert_ne!(h.definition_hash, base.definition_hash);
    assert_ne!(h.identity_hash, base.identity_hash);
    assert_eq!(h.source_hash, base.source_hash);

    let p = cust();
    p.edit(
        "sources/app.yaml",
        "mrr: { from: mrr, type: number }",
        "mrr: { from: mrr, type: integer }",
    );
    let h = p.hashes();
    assert_eq!(h.definition_hash, base.definition_hash);
    assert_eq!(h.identity_hash, base.identity_hash);
    assert_ne!(h.source_hash, base.source_hash);

    let p = cust();
    p.write(
        "schemas/cancel.yaml",
        "cancel: {fields: {email: {type: string}}}\n",
    );
    // (The schema makes the set invalid — other events lack schemas — so hash the document
    // without validating.)
    let raw = defacto_core::definitions::load_path(p.path()).unwrap();
    assert_eq!(raw.schemas.len(), 1);
}

#[test]
fn schemas_change_no_hash_but_the_version_name() {
    let p = min();
    let (h0, v0) = (p.hashes(), p.version());
    p.write(
        "schemas/make.yaml",
        "make: {fields: {key: {type: string}}}\n",
    );
    assert_eq!(p.hashes(), h0);
    assert_ne!(p.version(), v0);
}

// CONTRACTS A14b
#[test]
fn identity_order_is_hashed() {
    let base = cust();
    let p = cust();
    p.edit(
        "entities/customer.yaml",
        "    email: { match: exact, normalize: \"str::to_lowercase(value)\" }\n    phone: { match: exact }\n",
        "    phone: { match: exact }\n    email: { match: exact, normalize: \"str::to_lowercase(value)\" }\n",
    );
    let (a, b) = (base.hashes(), p.hashes());
    assert_ne!(a.identity_hash, b.identity_hash);
    assert_ne!(a.definition_hash, b.definition_hash);
    assert_eq!(a.source_hash, b.source_hash);
    assert_ne!(base.version(), p.version());
    let defs = Definitions::load(p.path()).unwrap();
    let order: Vec<&String> = defs.entities["customer"].identity.keys().collect();
    assert_eq!(order, ["phone", "email"]);
}

// CONTRACTS A17 (the naming half: identical definitions give the same 8-hex name)
#[test]
fn version_names_derive_from_content() {
    let v1 = cust().version();
    assert_eq!(v1.len(), 8);
    assert!(v1
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(cust().version(), v1);
    let p = cust();
    p.edit("entities/customer.yaml", "default: free", "default: basic");
    assert_ne!(p.version(), v1);
}

#[test]
fn the_normalized_document_reloads_to_the_same_document() {
    let defs = Definitions::load(cust().path()).unwrap();
    let doc = NormalizedDocument::of(&defs);
    let again = Definitions::from_document(doc.json()).unwrap();
    assert_eq!(NormalizedDocument::of(&again), doc);

    // A store that loses key order (Postgres jsonb) still gives the declared identity order.
    let mut json = doc.json().clone();
    let identity = json["entities"]["customer"]["identity"]
        .as_object_mut()
        .unwrap();
    let email = identity.shift_remove("email").unwrap();
    identity.insert("email".into(), email);
    let reordered = Definitions::from_document(&json).unwrap();
    let order: Vec<&String> = reordered.entities["customer"].identity.keys().collect();
    assert_eq!(order, ["email", "phone"]);
}

#[test]
fn the_document_form_loads_like_the_directory_form() {
    let dir = Definitions::load(cust().path()).unwrap();
    let text = format!(
        "entities:\n{}sources:\n{}",
        indent(&cust().read("entities/customer.yaml")),
        indent(&cust().read("sources/app.yaml"))
    );
    let doc = Definitions::from_yaml_str(&text).unwrap();
    assert_eq!(NormalizedDocument::of(&doc), NormalizedDocument::of(&dir));
    let p = Project::empty();
    p.write("defs.yaml", &text);
    let file = Definitions::load(&p.path().join("defs.yaml")).unwrap();
    assert_eq!(NormalizedDocument::of(&file), NormalizedDocument::of(&dir));
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[test]
fn structural_errors_name_file_and_path() {
    let cases = [
        ("  starts: new\n", "", "entity is missing 'starts'"),
        (
            "identity: { key: {} }\n",
            "identity: {}\n",
            "at least one field",
        ),
        (
            "new: { when: { make: { effects: [create] } } }",
            "new: { when: { make: { effects: [] } } }",
            "at least one effect",
        ),
        (
            "new: { when: { make: { effects: [create] } } }",
            "new: { when: { make: { effects: [destroy] } } }",
            "unknown effect 'destroy'",
        ),
        (
            "new: { when: { make: { effects: [create] } } }",
            "new: { when: { make: { effects: [{explode: {}}] } } }",
            "unknown effect kind 'explode'",
        ),
        (
            "new: { when: { make: { effects: [create] } } }",
            "new: { when: { make: { effects: [{transition: {}}] } } }",
            "'transition' is missing 'to'",
        ),
        (
            "new: { when: { make: { effects: [create] } } }",
            "new: { when: { make: { effects: [{set: {value: 1}, increment: {property: x}}] } } }",
            "exactly one key",
        ),
        (
            "new: { when: { make: { effects: [create] } } }",
            "new: { when: { make: { effects: [create] } }, after: [{type: soon, threshold: 1d}] }",
            "unknown time rule type 'soon'",
        ),
        (
            "new: { when: { make: { effects: [create] } } }",
            "new: { when: { make: { effects: [create] } }, after: [{type: inactivity}] }",
            "missing 'threshold'",
        ),
    ];
    for (from, to, fragment) in cases {
        let p = min();
        p.edit(MIN_ENTITY, from, to);
        let r = p.result();
        assert_eq!(r.errors.len(), 1, "{fragment}: {:?}", r.errors);
        assert!(
            r.errors[0].starts_with("entities/thing.yaml: thing"),
            "{:?}",
            r.errors[0]
        );
        assert!(
            r.errors[0].contains(fragment),
            "{:?} lacks {fragment}",
            r.errors[0]
        );
    }
    let p = min();
    p.edit(MIN_SOURCE, "  events:\n", "  evts:\n");
    one_error(&p, "source is missing 'events'");
    let p = min();
    p.write(
        "schemas/make.yaml",
        "make: {fields: {key: {required: true}}}\n",
    );
    one_error(&p, "schema field is missing 'type'");
    let p = min();
    p.write("schemas/make.yaml", "make: {}\n");
    one_error(&p, "schema is missing 'fields'");
}

#[test]
fn the_spec_example_error_reads_as_documented() {
    let p = cust();
    p.edit(
        "entities/customer.yaml",
        "- { transition: { to: churned } }",
        "- { transition: { to: churnd } }",
    );
    let r = p.result();
    assert_eq!(
        r.errors,
        ["entities/customer.yaml: customer.states.active.when.cancel.effects[0].transition.to: unknown state 'churnd'"]
    );
}

#[test]
fn malformed_yaml_reports_file_line_and_column() {
    let p = min();
    p.write(
        MIN_ENTITY,
        "thing:\n  starts: new\n  identity: { key: {}\n  states: x\n",
    );
    let r = p.result();
    assert_eq!(r.errors.len(), 1);
    let e = &r.errors[0];
    assert!(e.starts_with("entities/thing.yaml: line "), "{e}");
    assert!(e.contains("column"), "{e}");
    assert!(e.contains("malformed YAML"), "{e}");
}

#[test]
fn plain_dates_must_be_quoted() {
    let p = min_with_property("x: {type: datetime, default: 2024-01-01}");
    let r = p.result();
    assert_eq!(r.errors.len(), 1);
    assert!(r.errors[0].contains("quote it"), "{:?}", r.errors);
}

#[test]
fn yaml_1_1_booleans_reach_the_model() {
    // `on` is a boolean key in YAML 1.1; a quoted "on" is a name.
    let p = min_with_effect("{set: {property: q, value: on}}");
    valid(&p);
    let defs = Definitions::load(p.path()).unwrap();
    let effects = &defs.entities["thing"].states["new"].when["make"].effects;
    match &effects[1] {
        defacto_core::definitions::Effect::Set { value, .. } => {
            assert_eq!(value.as_ref().unwrap(), &serde_json::json!(true))
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn proposed_warnings_for_runtime_only_problems() {
    let p = min_with_effect("{increment: {property: q, by: many}}");
    let r = p.result();
    assert!(r.valid);
    assert!(
        r.warnings.iter().any(|w| w.contains("'by'")),
        "{:?}",
        r.warnings
    );

    let p = min_with_effect("{relate: {type: nothing, target: thing, hints: {thing: [nokey]}}}");
    let r = p.result();
    assert!(r.valid, "{:?}", r.errors);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("declared by no entity")),
        "{:?}",
        r.warnings
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("'nokey' is not an identity field")),
        "{:?}",
        r.warnings
    );

    let p = min();
    p.edit(MIN_ENTITY, "key: {}", "key: {match: fuzzy}");
    let r = p.result();
    assert!(r.valid);
    assert!(
        r.warnings.iter().any(|w| w.contains("match 'fuzzy'")),
        "{:?}",
        r.warnings
    );

    let p = min();
    p.edit(MIN_SOURCE, "  events:", "  event_id: [nope]\n  events:");
    let r = p.result();
    assert!(r.valid);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("event_id field 'nope'")),
        "{:?}",
        r.warnings
    );

    let p = min_with_effect("{set: {property: q, compute: \"len(1, 2)\"}}");
    let r = p.result();
    assert!(r.valid);
    assert!(
        r.warnings.iter().any(|w| w.contains("'len' expects")),
        "{:?}",
        r.warnings
    );
}

mod drafts {
    use super::*;
    use defacto_core::definitions::draft::{Draft, DraftOp};
    use defacto_core::definitions::mode::BuildMode;
    use serde_json::json;

    fn base() -> (serde_json::Value, defacto_core::definitions::Hashes) {
        let doc = NormalizedDocument::of(&Definitions::load(cust().path()).unwrap());
        (doc.json().clone(), doc.hashes())
    }

    // CONTRACTS A19
    #[test]
    fn draft_impact_diff_and_rollback() {
        let (doc, active) = base();
        let mut d = Draft::new(doc.clone());
        assert_eq!(
            d.impact(Some(&active)).unwrap(),
            (BuildMode::Incremental, "no definition changes")
        );
        let ltv = DraftOp::AddProperty {
            entity: "customer".into(),
            name: "ltv".into(),
            spec: json!({"type": "number", "default": 0}),
        };
        d.apply(&ltv).unwrap();
        assert_eq!(
            d.impact(Some(&active)).unwrap(),
            (BuildMode::Full, "entity definitions changed")
        );
        assert_eq!(
            d.diff()["modified"]["customer"]["added_properties"],
            json!(["ltv"])
        );
        let before = d.clone();
        let err = d.apply(&ltv).unwrap_err();
        assert!(
            err.message
                .contains("Property 'ltv' already exists on 'customer'"),
            "{}",
            err.message
        );
        assert_eq!(d, before, "a failed operation leaves the draft unchanged");

        let mut d = Draft::new(doc.clone());
        let mut fields = serde_json::Map::new();
        fields.insert("email".into(), json!({"match": "exact"}));
        d.apply(&DraftOp::UpdateIdentity {
            entity: "customer".into(),
            fields,
        })
        .unwrap();
        assert_eq!(
            d.impact(Some(&active)).unwrap().0,
            BuildMode::FullWithIdentityReset
        );
        assert_eq!(
            d.diff()["modified"]["customer"]["identity_changed"],
            json!(true)
        );
        assert_eq!(
            Draft::new(doc).impact(None).unwrap(),
            (BuildMode::Full, "no active version to compare")
        );
    }

    #[test]
    fn every_draft_operation() {
        let (doc, _) = base();
        let mut d = Draft::new(doc);
        let ops = [
            DraftOp::AddState {
                entity: "customer".into(),
                name: "suspended".into(),
                on: None,
                after: None,
            },
            DraftOp::AddTransition {
                entity: "customer".into(),
                state: "active".into(),
                event: "suspend".into(),
                to: "suspended".into(),
            },
            DraftOp::AddHandler {
                entity: "customer".into(),
                state: "suspended".into(),
                event: "login".into(),
                effects: json!([{"transition": {"to": "active"}}]),
                guard: Some("event.n != null".into()),
            },
            DraftOp::RemoveProperty {
                entity: "customer".into(),
                name: "score".into(),
            },
        ];
        for op in &ops {
            d.apply(op)
                .unwrap_or_else(|e| panic!("{op:?}: {}", e.message));
        }
        let diff = d.diff();
        assert_eq!(
            diff["modified"]["customer"]["added_states"],
            json!(["suspended"])
        );
        assert_eq!(
            diff["modified"]["customer"]["removed_properties"],
            json!(["score"])
        );
        // Removing the handler's `bump` target property left an increment of an undeclared
        // property: compilation accepts the draft, full validation (register) does not.
        assert!(d.definitions().is_err());
        for (op, fragment) in [
            (
                DraftOp::RemoveState {
                    entity: "customer".into(),
                    name: "nope".into(),
                },
                "State 'nope' not found on 'customer'",
            ),
            (
                DraftOp::AddTransition {
                    entity: "customer".into(),
                    state: "active".into(),
                    event: "suspend".into(),
                    to: "x".into(),
                },
                "Handler for 'suspend' already exists",
            ),
            (
                DraftOp::AddProperty {
                    entity: "ghost".into(),
                    name: "x".into(),
                    spec: json!({"type": "string"}),
                },
                "Entity type 'ghost' not found",
            ),
            (
                DraftOp::AddHandler {
                    entity: "customer".into(),
                    state: "active".into(),
                    event: "zap".into(),
                    effects: json!([]),
                    guard: None,
                },
                "Draft validation failed",
            ),
        ] {
            let err = d.apply(&op).unwrap_err();
            assert!(err.message.contains(fragment), "{op:?}: {}", err.message);
        }
    }
}

// CONTRACTS K7: definition errors are typed, and one error carries every problem found.
#[test]
fn one_definition_error_lists_every_problem() {
    let p = cust();
    p.edit(
        "entities/customer.yaml",
        "- { transition: { to: churned } }",
        "- { transition: { to: actve } }",
    );
    p.edit(
        "entities/customer.yaml",
        "- { increment: { property: logins } }",
        "- { increment: { property: lgins } }",
    );
    let err: defacto_core::definitions::DefinitionError = Definitions::load(p.path()).unwrap_err();
    assert_eq!(err.errors.len(), 2, "{:?}", err.errors);
    assert!(
        err.errors.iter().any(|e| e.contains("'actve'")),
        "{:?}",
        err.errors
    );
    assert!(
        err.errors.iter().any(|e| e.contains("'lgins'")),
        "{:?}",
        err.errors
    );
    assert!(
        err.message.starts_with("Invalid definitions: ")
            && err.message.contains("actve")
            && err.message.contains("lgins"),
        "{}",
        err.message
    );
}
