//! The in-memory engine across definition changes and explicit merges: mode detection,
//! FULL / FULL_WITH_IDENTITY_RESET / FULL_RENORMALIZE builds, explicit merges and their
//! survival through rebuilds and identity resets.

mod common;

use common::{app, cust, cust_with, t};

use defacto_core::definitions::mode::BuildMode;
use defacto_core::definitions::Definitions;
use defacto_core::engine::{BuildOptions, Engine};
use defacto_core::history::HistoryRow;
use defacto_core::identity::derived_id;
use defacto_core::Value;
use serde_json::{json, Value as Json};

const TRIM: (&str, &str) = (
    "normalize: \"str::to_lowercase(value)\"",
    "normalize: \"str::trim(str::to_lowercase(value))\"",
);

fn build(e: &mut Engine, at: &str) -> defacto_core::engine::BuildResult {
    e.build(BuildOptions::at(t(at)))
}

fn ingest(e: &mut Engine, raws: &[Json]) {
    e.ingest("app", raws, t("01-10")).unwrap();
}

fn email(v: &str) -> String {
    derived_id(None, "customer", "email", v)
}

fn rows<'a>(e: &'a Engine, id: &str) -> Vec<&'a HistoryRow> {
    e.history
        .iter()
        .filter(|(k, _)| k.1 == id)
        .flat_map(|(_, h)| h.rows.iter())
        .collect()
}

fn prop(e: &Engine, row: &HistoryRow, name: &str) -> Value {
    let i = e.definitions().entities["customer"]
        .properties
        .get_index_of(name)
        .unwrap();
    row.properties[i].clone()
}

fn current(e: &Engine) -> Vec<(String, &HistoryRow)> {
    e.history
        .iter()
        .filter(|(k, _)| k.0 == "customer")
        .filter_map(|(k, h)| h.current().map(|r| (k.1.clone(), r)))
        .collect()
}

fn s1(e: &mut Engine) {
    ingest(
        e,
        &[
            app("signup", "01-01 10:00", json!({"email": "Alice@X.com"})),
            app(
                "upgrade",
                "01-02 10:00",
                json!({"email": "alice@x.com", "plan": "pro", "mrr": "49"}),
            ),
            app(
                "login",
                "01-03 10:00",
                json!({"email": "alice@x.com", "n": 1}),
            ),
        ],
    );
}

// CONTRACTS A15
#[test]
fn mode_detection_follows_the_kind_of_edit() {
    let run = |defs: Option<Definitions>, more_events: bool| {
        let mut e = Engine::new(cust());
        s1(&mut e);
        build(&mut e, "01-04");
        if let Some(d) = defs {
            e.set_definitions(d);
        }
        if more_events {
            ingest(
                &mut e,
                &[app(
                    "login",
                    "01-05",
                    json!({"email": "alice@x.com", "n": 2}),
                )],
            );
        }
        build(&mut e, "01-06").mode
    };
    assert_eq!(run(None, true), BuildMode::Incremental);
    assert_eq!(run(None, false), BuildMode::Skip);
    assert_eq!(
        run(
            Some(cust_with(&[("default: free", "default: basic")], &[])),
            false
        ),
        BuildMode::Full
    );
    assert_eq!(
        run(Some(cust_with(&[TRIM], &[])), false),
        BuildMode::FullWithIdentityReset
    );
    let mapping = (
        "signup:  { mappings: { email: { from: email }",
        "signup:  { mappings: { email: { compute: \"str::to_lowercase(event.email)\" }",
    );
    assert_eq!(
        run(Some(cust_with(&[], &[mapping])), false),
        BuildMode::FullRenormalize
    );
    assert_eq!(
        run(
            Some(cust_with(
                &[("default: free", "default: basic")],
                &[mapping]
            )),
            false
        ),
        BuildMode::FullRenormalize
    );
    let mut e = Engine::new(cust());
    s1(&mut e);
    build(&mut e, "01-04");
    assert_eq!(
        e.build(BuildOptions {
            full: true,
            ..BuildOptions::at(t("01-04"))
        })
        .mode,
        BuildMode::Full
    );
    assert_eq!(
        e.build(BuildOptions {
            full: true,
            from_raw: true,
            ..BuildOptions::at(t("01-04"))
        })
        .mode,
        BuildMode::FullRenormalize
    );
}

// CONTRACTS G14, CONTRACTS A16 (the build half: an entity-only change is FULL, ids are kept)
#[test]
fn a_full_build_reflects_new_definitions() {
    let mut e = Engine::new(cust());
    s1(&mut e);
    build(&mut e, "01-04");
    e.set_definitions(cust_with(&[("default: free", "default: basic")], &[]));
    let r = build(&mut e, "01-04");
    assert_eq!(r.mode, BuildMode::Full);
    let a = "977754ef-7546-8aa8-a601-f6954a4aa7e2";
    let rows = rows(&e, a);
    assert_eq!(prop(&e, rows[0], "plan"), Value::str("basic"));
    assert_eq!(prop(&e, rows.last().unwrap(), "plan"), Value::str("pro"));
    assert!(e
        .history
        .values()
        .flat_map(|h| &h.rows)
        .all(|r| prop(&e, r, "plan") != Value::str("free")));
}

// CONTRACTS C15
#[test]
fn an_unknown_source_is_rejected_and_nothing_is_appended() {
    let mut e = Engine::new(cust());
    let err = e
        .ingest(
            "nosuch",
            &[app("signup", "01-01", json!({"email": "a@x.com"}))],
            t("01-10"),
        )
        .unwrap_err();
    assert!(err.to_string().contains("nosuch"));
    assert!(e.ledger().is_empty());
}

fn d10() -> Engine {
    let mut e = Engine::new(cust());
    ingest(
        &mut e,
        &[
            app("signup", "01-01 10:00", json!({"email": "bob@x.com"})),
            app("signup", "01-15 10:00", json!({"email": "alice@x.com"})),
            app(
                "upgrade",
                "01-15 10:01",
                json!({"email": "alice@x.com", "plan": "pro", "mrr": 10}),
            ),
        ],
    );
    build(&mut e, "01-16");
    e
}

fn assert_d10_history(e: &Engine) {
    let (a, b) = (email("alice@x.com"), email("bob@x.com"));
    let b_rows = rows(e, &b);
    assert_eq!(b_rows.len(), 2, "{b_rows:#?}");
    assert_eq!(
        (b_rows[0].valid_from, b_rows[0].valid_to),
        (t("01-01 10:00"), Some(t("01-15 10:01")))
    );
    assert_eq!(prop(e, b_rows[0], "email"), Value::str("bob@x.com"));
    assert_eq!(prop(e, b_rows[0], "plan"), Value::str("free"));
    assert_eq!(b_rows[1].valid_to, None);
    assert_eq!(prop(e, b_rows[1], "plan"), Value::str("pro"));
    assert_eq!(prop(e, b_rows[1], "mrr"), Value::Float(10.0));
    assert_eq!(prop(e, b_rows[1], "annual"), Value::Float(120.0));
    let a_rows = rows(e, &a);
    let last = a_rows.last().unwrap();
    assert_eq!(last.valid_to, Some(t("02-01")));
    assert_eq!(last.merged_into.as_deref(), Some(b.as_str()));
    let current = current(e);
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].0, b);
}

// CONTRACTS D10
#[test]
fn an_explicit_merge_rebuilds_the_winner_from_both_histories() {
    let mut e = d10();
    let (a, b) = (email("alice@x.com"), email("bob@x.com"));
    let r = e.merge(&a, &b, "same person", t("02-01")).unwrap();
    assert_eq!(
        (
            r.events_reassigned,
            r.entities_rebuilt,
            r.tombstones_produced
        ),
        (2, 1, 1)
    );
    assert!(!r.duplicate);
    assert_d10_history(&e);
    let system: Vec<_> = e
        .ledger()
        .iter()
        .filter(|x| x.event_type == "_defacto_merge")
        .collect();
    assert_eq!(system.len(), 1);
    assert_eq!(system[0].source, "_defacto");
    assert!(e.assignments()[&("customer".to_string(), b.clone())].contains(&system[0].sequence));
    let log = e.resolver().store().merge_log();
    assert_eq!(
        (log[0].from.as_str(), log[0].into.as_str()),
        (a.as_str(), b.as_str())
    );
}

// CONTRACTS D11, CONTRACTS D16
#[test]
fn merge_errors_and_repetitions() {
    let mut e = d10();
    let (a, b) = (email("alice@x.com"), email("bob@x.com"));
    let err = e.merge(&a, "nope", "", t("02-01")).unwrap_err();
    assert_eq!(err.to_string(), "Surviving entity 'nope' not found");
    e.merge(&a, &b, "", t("02-01")).unwrap();
    let count = e.ledger().len();
    let again = e.merge(&a, &b, "", t("02-01")).unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (
            again.events_reassigned,
            again.entities_rebuilt,
            again.tombstones_produced
        ),
        (0, 0, 0)
    );
    assert_eq!(e.ledger().len(), count);
    let later = e.merge(&a, &b, "", t("02-02")).unwrap();
    assert!(!later.duplicate);
    assert_eq!(e.ledger().len(), count + 1);
    assert_eq!(current(&e).len(), 1);
    assert_eq!(prop(&e, current(&e)[0].1, "plan"), Value::str("pro"));
}

// CONTRACTS D12
#[test]
fn merges_survive_full_rebuilds_and_identity_resets() {
    let mut e = d10();
    let (a, b) = (email("alice@x.com"), email("bob@x.com"));
    e.merge(&a, &b, "", t("02-01")).unwrap();
    let before = format!("{:?}", e.history);
    e.build(BuildOptions {
        full: true,
        ..BuildOptions::at(t("01-16"))
    });
    assert_eq!(
        format!("{:?}", e.history),
        before,
        "a FULL build rewrites the same rows"
    );
    e.set_definitions(cust_with(&[TRIM], &[]));
    let r = build(&mut e, "01-16");
    assert_eq!(r.mode, BuildMode::FullWithIdentityReset);
    assert_d10_history(&e);
}

// CONTRACTS D14
#[test]
fn an_explicit_merge_may_go_against_priority() {
    let mut e = Engine::new(cust());
    ingest(
        &mut e,
        &[
            app("signup", "01-01 10:00", json!({"email": "a@x.com"})),
            app("signup", "01-02 10:00", json!({"phone": "555"})),
        ],
    );
    build(&mut e, "01-03");
    let (ea, p5, eb) = (
        email("a@x.com"),
        derived_id(None, "customer", "phone", "555"),
        email("b@x.com"),
    );
    e.merge(&ea, &p5, "", t("01-04")).unwrap();
    let ea_rows = rows(&e, &ea);
    assert_eq!(ea_rows.last().unwrap().valid_to, Some(t("01-04")));
    assert_eq!(
        ea_rows.last().unwrap().merged_into.as_deref(),
        Some(p5.as_str())
    );
    ingest(
        &mut e,
        &[app(
            "link",
            "01-05",
            json!({"email": "a@x.com", "phone": "555"}),
        )],
    );
    assert_eq!(build(&mut e, "01-05").merges_detected, 0);
    ingest(
        &mut e,
        &[app(
            "link",
            "01-06",
            json!({"email": "b@x.com", "phone": "555"}),
        )],
    );
    let r = build(&mut e, "01-06");
    assert_eq!(r.merges_detected, 1);
    let p5_rows = rows(&e, &p5);
    assert_eq!(p5_rows.last().unwrap().valid_to, Some(t("01-06")));
    assert_eq!(
        p5_rows.last().unwrap().merged_into.as_deref(),
        Some(eb.as_str())
    );
    let cur = current(&e);
    assert_eq!(cur.len(), 1);
    assert_eq!(cur[0].0, eb);
    assert_eq!(cur[0].1.valid_from, t("01-01 10:00"));
    assert_eq!(prop(&e, cur[0].1, "email"), Value::str("a@x.com"));
    let history = format!("{:?}", e.history);
    let log = e.resolver().store().merge_log();
    // An identity reset re-derives the same ids and merge_log rows.
    e.set_definitions(cust_with(&[TRIM], &[]));
    build(&mut e, "01-06");
    assert_eq!(e.resolver().store().merge_log(), log);
    assert_eq!(format!("{:?}", e.history), history);
}

// CONTRACTS D15
#[test]
fn an_identity_reset_renormalizes_stored_hints() {
    let mut e = Engine::new(cust());
    ingest(
        &mut e,
        &[app("signup", "01-01 10:00", json!({"email": " bob@x.com"}))],
    );
    build(&mut e, "01-02");
    let bw = email(" bob@x.com");
    assert_eq!(rows(&e, &bw).len(), 1);
    e.set_definitions(cust_with(&[TRIM], &[]));
    assert_eq!(
        build(&mut e, "01-02").mode,
        BuildMode::FullWithIdentityReset
    );
    let b = email("bob@x.com");
    assert!(rows(&e, &bw).is_empty());
    assert_eq!(prop(&e, rows(&e, &b)[0], "email"), Value::str(" bob@x.com"));
    ingest(
        &mut e,
        &[app(
            "upgrade",
            "01-02 10:00",
            json!({"email": "bob@x.com", "plan": "pro", "mrr": 5}),
        )],
    );
    build(&mut e, "01-03");
    let cur = current(&e);
    assert_eq!(cur.len(), 1);
    assert_eq!(cur[0].0, b);
    assert_eq!(prop(&e, cur[0].1, "plan"), Value::str("pro"));
}

// CONTRACTS D17
#[test]
fn invalid_merges_change_nothing() {
    let mut e = d10();
    let (a, b) = (email("alice@x.com"), email("bob@x.com"));
    e.merge(&a, &b, "", t("02-01")).unwrap();
    e.ingest(
        "billing",
        &[json!({"event": "order.created", "created_at": "2024-01-20T00:00:00Z", "id": "o1", "customer_email": "bob@x.com", "amount": 5})],
        t("02-01"),
    )
    .unwrap();
    build(&mut e, "02-01");
    let o1 = derived_id(None, "order", "order_id", "o1");
    let (count, history) = (e.ledger().len(), format!("{:?}", e.history));
    let err = e.merge(&b, &b, "", t("02-03")).unwrap_err();
    assert!(err.to_string().contains("into itself"));
    for (from, into) in [(o1.as_str(), b.as_str()), (b.as_str(), o1.as_str())] {
        let err = e.merge(from, into, "", t("02-03")).unwrap_err();
        assert!(err.to_string().contains("Cannot merge"), "{err}");
        assert!(err.to_string().contains("order") && err.to_string().contains("customer"));
    }
    assert_eq!(e.ledger().len(), count);
    assert_eq!(format!("{:?}", e.history), history);
}

// CONTRACTS A14b (the build half): reordering identity fields resets identity and the
// customer known by both keys carries its phone-derived id.
#[test]
fn reordering_identity_fields_renames_by_the_new_priority() {
    let mut e = Engine::new(cust());
    ingest(
        &mut e,
        &[app(
            "signup",
            "01-01",
            json!({"email": "a@x.com", "phone": "555"}),
        )],
    );
    build(&mut e, "01-02");
    assert_eq!(current(&e)[0].0, email("a@x.com"));
    e.set_definitions(cust_with(
        &[(
            "    email: { match: exact, normalize: \"str::to_lowercase(value)\" }\n    phone: { match: exact }\n",
            "    phone: { match: exact }\n    email: { match: exact, normalize: \"str::to_lowercase(value)\" }\n",
        )],
        &[],
    ));
    assert_eq!(
        build(&mut e, "01-02").mode,
        BuildMode::FullWithIdentityReset
    );
    assert_eq!(
        current(&e)[0].0,
        derived_id(None, "customer", "phone", "555")
    );
}

// PIPELINE.md §10.7: a source fix recovers events that failed before.
#[test]
fn renormalization_recovers_failed_records() {
    let mut e = Engine::new(cust());
    let r = e
        .ingest(
            "app",
            &[
                app(
                    "upgrade",
                    "01-02",
                    json!({"email": "a@x.com", "plan": "pro", "mrr": "4_9"}),
                ),
                app("signup", "01-01", json!({"email": "a@x.com"})),
            ],
            t("01-10"),
        )
        .unwrap();
    assert_eq!(r.events_failed, 1);
    build(&mut e, "01-03");
    let fixed = cust_with(
        &[],
        &[(
            "mrr: { from: mrr, type: number }",
            "mrr: { compute: \"to_float(replace(event.mrr, '_', ''))\" }",
        )],
    );
    e.set_definitions(fixed);
    let r = build(&mut e, "01-03");
    assert_eq!(r.mode, BuildMode::FullRenormalize);
    assert_eq!(e.ledger().len(), 2);
    let cur = current(&e);
    assert_eq!(prop(&e, cur[0].1, "plan"), Value::str("pro"));
    assert_eq!(prop(&e, cur[0].1, "mrr"), Value::Float(49.0));
}

// PIPELINE.md §10.7 step 2: narrowing the event id fields marks rows as duplicates, and
// widening them again un-marks them.
#[test]
fn renormalization_recomputes_duplicates_reversibly() {
    let mut e = Engine::new(cust());
    ingest(
        &mut e,
        &[
            app("signup", "01-01", json!({"email": "a@x.com", "phone": "1"})),
            app("signup", "01-02", json!({"email": "a@x.com", "phone": "2"})),
        ],
    );
    build(&mut e, "01-03");
    assert_eq!(e.ledger().len(), 2);
    e.set_definitions(cust_with(
        &[],
        &[(
            "app:\n  event_type: type\n",
            "app:\n  event_type: type\n  event_id: [email]\n",
        )],
    ));
    assert_eq!(build(&mut e, "01-03").mode, BuildMode::FullRenormalize);
    assert_eq!(e.ledger().len(), 1);
    assert_eq!(e.ledger()[0].timestamp, t("01-01"));
    e.set_definitions(cust());
    build(&mut e, "01-03");
    assert_eq!(e.ledger().len(), 2);
}

/// A FULL build of `e`'s ledger over the entities `owns` accepts, given only `ledger`.
fn full_pass(
    e: &Engine,
    at: &str,
    ledger: &[defacto_core::replay::LedgerEvent],
    owns: &(dyn Fn(&str) -> bool + Sync),
) -> defacto_core::build::BuildOutput {
    let plan = defacto_core::build::BuildPlan {
        mode: BuildMode::Full,
        as_of: t(at),
        cursor: 0,
        resolve_cursor: e.cursor(),
        watermark: None,
        merges: Vec::new(),
        rebuilds: Vec::new(),
    };
    // The entities found through `owns`, and the same entities listed by the caller, as the
    // jobs list a partition's: the same output.
    let listed: Vec<_> = e.assignments().keys().filter(|k| owns(&k.1)).collect();
    let run = |entities| {
        let inputs = defacto_core::build::BuildInputs {
            defs: e.definitions(),
            ledger,
            assignments: e.assignments(),
            identity: e.resolver().store(),
            owns,
            entities,
            workers: 2,
        };
        defacto_core::build::run(&inputs, &plan, &mut std::collections::BTreeMap::new())
    };
    let found = run(None);
    let given = run(Some(listed.as_slice()));
    assert_eq!(found.changes, given.changes);
    assert_eq!(found.slots, given.slots);
    assert_eq!(found.result, given.result);
    found
}

// Issue 4: a FULL build replayed a partition of entities at a time, each partition given only
// the ledger rows `partition_masks` sends it, folds (`BuildOutput::absorb`) into the output of
// one pass — merged entities, failures and time rules included.
#[test]
fn a_full_build_in_partitions_folds_into_one_pass() {
    use defacto_core::build::partition_masks;
    use defacto_core::identity::shard_of;
    // `bump` events fail: their guard calls an unknown function.
    let mut e = Engine::new(cust_with(
        &[(
            "        bump:\n          effects:",
            "        bump:\n          guard: \"upper(event.email) != 'X'\"\n          effects:",
        )],
        &[],
    ));
    let mut more = vec![
        app("signup", "01-01 10:00", json!({"email": "bob@x.com"})),
        app("signup", "01-15 10:00", json!({"email": "alice@x.com"})),
        app("bump", "01-15 11:00", json!({"email": "alice@x.com"})),
    ];
    for i in 0..12 {
        let who = format!("c{i}@x.com");
        more.push(app("signup", "02-02 09:00", json!({ "email": who })));
        let upgrade = json!({ "email": who, "plan": "pro", "mrr": i });
        more.push(app("upgrade", &format!("02-0{} 10:00", 3 + i % 5), upgrade));
        if i % 4 == 0 {
            more.push(app("bump", "02-09 10:00", json!({ "email": who })));
        }
    }
    ingest(&mut e, &more);
    build(&mut e, "01-20");
    let (a, b) = (email("alice@x.com"), email("bob@x.com"));
    e.merge(&a, &b, "same person", t("02-01")).unwrap();
    build(&mut e, "03-01");
    let all = |_: &str| true;
    let one = full_pass(&e, "03-01", e.ledger(), &all);
    assert!(one.changes.len() >= 13, "{}", one.changes.len());
    assert!(
        !one.result.failures.is_empty(),
        "the \"lots\" upgrades fail"
    );
    for parts in [1usize, 2, 3, 5] {
        let masks = partition_masks(e.assignments(), e.resolver().store(), |id| {
            shard_of(id, parts as u32) as usize
        });
        let mut folded: Option<defacto_core::build::BuildOutput> = None;
        for p in 0..parts {
            let ledger: Vec<_> = e
                .ledger()
                .iter()
                .filter(|ev| masks.get(&ev.sequence).is_some_and(|m| m >> p & 1 == 1))
                .cloned()
                .collect();
            let owns = move |id: &str| shard_of(id, parts as u32) as usize == p;
            let out = full_pass(&e, "03-01", &ledger, &owns);
            match folded.as_mut() {
                None => folded = Some(out),
                Some(f) => f.absorb(out),
            }
        }
        let mut folded = folded.unwrap();
        // Each partition counts the rows it was given; the caller knows the whole ledger's.
        folded.result.events_processed = one.result.events_processed;
        folded.watermark = one.watermark;
        assert_eq!(
            format!("{:?}", folded.result),
            format!("{:?}", one.result),
            "{parts}"
        );
        assert_eq!(folded.failure_order, one.failure_order, "{parts}");
        assert_eq!(folded.changes, one.changes, "{parts}");
        assert_eq!(folded.slots, one.slots, "{parts}");
        assert_eq!(folded.cursor, one.cursor, "{parts}");
    }
}
