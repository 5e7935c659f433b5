//! Identity resolution (PIPELINE.md §5, §11): the contracts of group D that need no storage,
//! the id table of CONTRACTS.md §0 and the shard function of J1.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{TimeZone, Utc};
use defacto_core::definitions::Definitions;
use defacto_core::fasthash::FastIndexMap;
use defacto_core::identity::{
    derived_id, salt_fingerprint, shard_hash, shard_of, ClusterHints, IdentityError,
    IdentityFields, IdentityStore, Key, MemoryIdentity, Merge, MergeLogRow, Resolver, SystemMerge,
};
use defacto_core::normalize::{Hints, NormalizedEvent, Normalizer};
use defacto_core::value::Instant;
use proptest::prelude::*;
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

const A: &str = "977754ef-7546-8aa8-a601-f6954a4aa7e2";
const B: &str = "80fc7c39-d549-8b90-91b3-784d1b828f70";
const EA: &str = "fbf2ddb4-0443-8ffd-afe7-93b0897586b9";
const EB: &str = "63a9fdf3-ca72-8c35-b0d7-92409de3a138";
const E123: &str = "08397c8a-aff3-8003-8d84-29fb125d5955";
const P5: &str = "c8eb3bf2-3985-812f-aabf-dc0d9563503b";
const P123: &str = "24bd9096-4a4e-8d34-af6a-fe444d809349";
const CX1: &str = "5c01af9b-f3c3-8a24-a9ff-28c486b10c83";
const O1: &str = "50006e3c-7bc3-8e62-a58c-03beb31500c0";
const OX1: &str = "02e545de-6a5c-89dd-a95b-51fdb9b12166";
const P1: &str = "37d4b23f-4f8e-8b5b-be62-f7de9c9b49f0";
const P2: &str = "3d4ee2aa-8ccd-8ef3-a391-0327c70b3e09";
const P3: &str = "14c4ae90-61ad-81e1-a650-58e41827a3af";

type Ident = Resolver<MemoryIdentity>;

fn cust() -> Definitions {
    Definitions::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cust")).unwrap()
}

/// D7's entity `p`, its identity fields declared in the given order.
fn entity_p(order: &str) -> Definitions {
    Definitions::from_yaml_str(&format!(
        "entities:\n  p:\n    starts: s\n    identity: {{{order}}}\n    states: {{s: {{when: {{x: {{effects: [create]}}}}}}}}\n\
         sources:\n  src:\n    event_type: type\n    timestamp: ts\n    events:\n      \
         x: {{mappings: {{a: {{from: a}}, b: {{from: b}}, cc: {{from: cc}}}}, hints: {{p: [a, b, cc]}}}}\n"
    ))
    .unwrap()
}

fn resolver(defs: &Definitions, store: MemoryIdentity) -> Ident {
    Resolver::new(IdentityFields::from_definitions(defs), None, store)
}

/// `MM-DD hh:mm` or `MM-DD` of 2024 (CONTRACTS.md §0).
fn at(text: &str) -> Instant {
    let (date, time) = text.split_once(' ').unwrap_or((text, "00:00"));
    let (m, d) = date.split_once('-').unwrap();
    let (h, min) = time.split_once(':').unwrap();
    let n = |s: &str| s.parse::<u32>().unwrap();
    Utc.with_ymd_and_hms(2024, n(m), n(d), n(h), n(min), 0)
        .unwrap()
}

fn normalized(defs: &Definitions, source: &str, raw: Json) -> NormalizedEvent {
    Normalizer::new(defs, at("01-10"))
        .normalize(source, &raw)
        .unwrap()
}

/// `app(type, ts, k=v, …)`.
fn app(defs: &Definitions, ty: &str, ts: &str, fields: Json) -> NormalizedEvent {
    let mut raw = json!({"type": ty, "ts": at(ts).to_rfc3339()});
    raw.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    normalized(defs, "app", raw)
}

/// `bill(raw_type, ts, …)`.
fn bill(defs: &Definitions, raw_type: &str, ts: &str, fields: Json) -> NormalizedEvent {
    let mut raw = json!({"event": raw_type, "created_at": at(ts).to_rfc3339()});
    raw.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    normalized(defs, "billing", raw)
}

/// Resolves `e` and returns the id it maps to for `customer`, with the merges it executed.
fn customer_of(r: &mut Ident, e: &NormalizedEvent) -> (String, Vec<Merge>) {
    let res = r.resolve(&e.hints, e.timestamp);
    (res.entities["customer"].clone(), res.merges)
}

/// Hints of one entity type given directly: `hints("p", &[("a", "1")])`.
fn hints(entity_type: &str, fields: &[(&str, &str)]) -> Hints {
    let values: FastIndexMap<String, String> = fields
        .iter()
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .collect();
    Hints::from([(entity_type.to_string(), values)])
}

fn merge(from: &str, into: &str, ts: &str) -> Merge {
    Merge {
        from: from.into(),
        into: into.into(),
        timestamp: at(ts),
    }
}

fn log_row(from: &str, into: &str, ts: &str) -> MergeLogRow {
    MergeLogRow {
        from: from.into(),
        into: into.into(),
        timestamp: at(ts),
    }
}

fn key(t: &str, f: &str, v: &str) -> Key {
    Key::new(t, f, v)
}

fn mappings(store: &MemoryIdentity) -> Vec<(Key, String)> {
    store
        .mappings()
        .map(|(k, id)| (k.clone(), id.to_string()))
        .collect()
}

fn cluster_hints(fields: &[(&str, &[&str])]) -> ClusterHints {
    fields
        .iter()
        .map(|(f, vs)| (f.to_string(), vs.iter().map(|v| v.to_string()).collect()))
        .collect()
}

/// Runs `job` with a fresh resolver over `store`, as a separate job (cold caches) would.
fn job<T>(defs: &Definitions, store: &mut MemoryIdentity, job: impl FnOnce(&mut Ident) -> T) -> T {
    let mut r = resolver(defs, std::mem::take(store));
    let out = job(&mut r);
    *store = r.into_store();
    out
}

// CONTRACTS §0 (the id table), PIPELINE §5.3
#[test]
fn derived_ids_of_the_contract_table() {
    let table = [
        ("customer", "email", "alice@x.com", A),
        ("customer", "email", "bob@x.com", B),
        ("customer", "email", "a@x.com", EA),
        ("customer", "email", "b@x.com", EB),
        ("customer", "email", "123", E123),
        ("customer", "phone", "555", P5),
        ("customer", "phone", "123", P123),
        (
            "customer",
            "email",
            "nobody@x.com",
            "2365660c-b763-83a3-a8f9-8452aa8a1c48",
        ),
        ("customer", "email", "x1", CX1),
        ("order", "order_id", "o1", O1),
        ("order", "order_id", "x1", OX1),
        (
            "order",
            "order_id",
            "o-a",
            "a3ca8d94-5da1-8112-8dfa-45d4fc67a8eb",
        ),
        (
            "order",
            "order_id",
            "o-b",
            "022f84dd-f8be-8aa3-8ff8-5db27c2436ee",
        ),
        ("p", "a", "1", P1),
        ("p", "b", "2", P2),
        ("p", "cc", "3", P3),
        (
            "customer",
            "email",
            " bob@x.com",
            "a1916fda-2a32-8cb2-8350-81024aff4114",
        ),
        (
            "customer",
            "phone",
            "666",
            "9301b3df-659a-8ab3-92b6-90148c9da285",
        ),
    ];
    for (t, f, v, id) in table {
        assert_eq!(derived_id(None, t, f, v), id, "id({t}, {f}, {v:?})");
    }
}

// PIPELINE §5.3 (salted derived ids; no published example, so checked against the hash)
#[test]
fn salted_ids_hash_salt_nul_and_the_key_text() {
    let id = derived_id(Some("pepper"), "customer", "email", "alice@x.com");
    assert_ne!(id, A);
    let digest = hex::encode(Sha256::digest(
        b"pepper\0defacto:customer:email:alice@x.com",
    ));
    let hexdigits: String = id.chars().filter(|c| *c != '-').collect();
    assert_eq!(id.len(), 36);
    assert_eq!([8, 13, 18, 23].map(|i| &id[i..i + 1]), ["-"; 4]);
    assert_eq!(&hexdigits[12..13], "8", "version nibble");
    assert!("89ab".contains(&hexdigits[16..17]), "variant bits");
    for (i, (got, want)) in hexdigits.chars().zip(digest.chars()).enumerate() {
        if i != 12 && i != 16 {
            assert_eq!(got, want, "hex digit {i}");
        }
    }
    // A configured empty salt is still a salt (it adds the 0x00 separator).
    assert_ne!(derived_id(Some(""), "customer", "email", "alice@x.com"), A);
    let defs = cust();
    let mut r = Resolver::new(
        IdentityFields::from_definitions(&defs),
        Some("pepper"),
        MemoryIdentity::new(),
    );
    let (got, _) = customer_of(
        &mut r,
        &app(&defs, "signup", "01-01", json!({"email": "alice@x.com"})),
    );
    assert_eq!(got, id);
}

// PIPELINE §5.3 (salt fingerprint)
#[test]
fn salt_fingerprint_is_empty_without_salt() {
    assert_eq!(salt_fingerprint(None), "");
    assert_eq!(
        salt_fingerprint(Some("")),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        salt_fingerprint(Some("pepper")),
        hex::encode(Sha256::digest(b"pepper"))
    );
    assert_ne!(
        salt_fingerprint(Some("pepper")),
        salt_fingerprint(Some("salt"))
    );
}

// CONTRACTS J1
#[test]
fn shard_function() {
    let cases = [
        (A, 982973428, 0, 1),
        (EA, 1477572358, 0, 1),
        (B, 1229639988, 0, 0),
        (O1, 1173807876, 0, 0),
        (P5, 2812581130, 0, 1),
        (E123, 469182611, 1, 2),
        ("alice", 735577801, 1, 1),
    ];
    for (id, hash, of2, of3) in cases {
        assert_eq!(shard_hash(id), hash, "shard_hash({id})");
        assert_eq!(shard_of(id, 2), of2, "{id} of 2");
        assert_eq!(shard_of(id, 3), of3, "{id} of 3");
    }
}

// PIPELINE §5.3 (priority: field declaration first, then derived id)
#[test]
fn priority_is_declaration_order_then_derived_id() {
    let defs = cust();
    let r = resolver(&defs, MemoryIdentity::new());
    let rank = |k: Key| r.rank(&k).unwrap();
    // P5 < Ea in byte order, yet every email key outranks every phone key.
    assert!(P5 < EA);
    assert!(rank(key("customer", "email", "a@x.com")) < rank(key("customer", "phone", "555")));
    // Within one field the smaller derived id ranks higher: B (80fc…) before A (9777…).
    assert!(
        rank(key("customer", "email", "bob@x.com")) < rank(key("customer", "email", "alice@x.com"))
    );
    assert_eq!(rank(key("customer", "phone", "555")).position, 1);
    assert_eq!(rank(key("customer", "phone", "555")).id, P5);
    assert_eq!(r.rank(&key("customer", "nickname", "x")), None);
    assert_eq!(r.rank(&key("ghost", "email", "x")), None);
}

// CONTRACTS D1
#[test]
fn ids_do_not_depend_on_order_or_batching() {
    let defs = cust();
    let b = app(&defs, "signup", "01-02", json!({"email": "b@x.com"}));
    let a = app(&defs, "signup", "01-01", json!({"email": "a@x.com"}));
    let expected = BTreeSet::from([EA.to_string(), EB.to_string()]);
    let ids = |store: &MemoryIdentity| {
        store
            .mappings()
            .map(|(_, id)| id.to_string())
            .collect::<BTreeSet<_>>()
    };

    for order in [[&b, &a], [&a, &b]] {
        // One pass over both events.
        let mut r = resolver(&defs, MemoryIdentity::new());
        let got: Vec<String> = order.iter().map(|e| customer_of(&mut r, e).0).collect();
        assert_eq!(got[0], if order[0].hints == a.hints { EA } else { EB });
        assert_eq!(ids(r.store()), expected);
        // Two separate jobs sharing the store.
        let mut store = MemoryIdentity::new();
        for e in order {
            let (_, merges) = job(&defs, &mut store, |r| customer_of(r, e));
            assert!(merges.is_empty());
        }
        assert_eq!(ids(&store), expected);
    }
    // A fresh store again (identity reset) gives the same ids.
    let mut r = resolver(&defs, MemoryIdentity::new());
    assert_eq!(customer_of(&mut r, &a).0, EA);
    assert_eq!(customer_of(&mut r, &b).0, EB);
}

// CONTRACTS D2
#[test]
fn normalized_hints_reach_one_entity() {
    let defs = cust();
    let mut r = resolver(&defs, MemoryIdentity::new());
    let signup = app(
        &defs,
        "signup",
        "01-01 10:00",
        json!({"email": "Alice@X.com"}),
    );
    let upgrade = app(
        &defs,
        "upgrade",
        "01-02 10:00",
        json!({"email": "alice@x.com", "plan": "pro", "mrr": "49"}),
    );
    assert_eq!(customer_of(&mut r, &signup), (A.to_string(), vec![]));
    assert_eq!(customer_of(&mut r, &upgrade), (A.to_string(), vec![]));
    assert_eq!(
        mappings(r.store()),
        vec![(key("customer", "email", "alice@x.com"), A.to_string())]
    );
    assert_eq!(
        signup.data["email"],
        defacto_core::Value::str("Alice@X.com")
    );
}

// CONTRACTS D3
#[test]
fn field_name_is_part_of_the_key() {
    let defs = cust();
    let mut r = resolver(&defs, MemoryIdentity::new());
    let signup = app(&defs, "signup", "01-01 10:00", json!({"phone": "123"}));
    let link = app(&defs, "link", "01-02 10:00", json!({"email": "123"}));
    assert_eq!(customer_of(&mut r, &signup), (P123.to_string(), vec![]));
    assert_eq!(customer_of(&mut r, &link), (E123.to_string(), vec![]));
    assert!(r.store().merge_log().is_empty());
    assert_eq!(r.hints(P123), cluster_hints(&[("phone", &["123"])]));
    assert_eq!(r.hints(E123), cluster_hints(&[("email", &["123"])]));
    // Smallest field name: email < phone.
    assert_eq!(r.lookup("123").as_deref(), Some(E123));
    assert_eq!(r.lookup("nothing"), None);
}

// CONTRACTS D4
#[test]
fn entity_types_scope_keys() {
    let defs = cust();
    let mut r = resolver(&defs, MemoryIdentity::new());
    let order = bill(
        &defs,
        "order.created",
        "01-01",
        json!({"id": "x1", "customer_email": "x1", "amount": 5}),
    );
    let res = r.resolve(&order.hints, order.timestamp);
    assert_eq!(
        res.entities,
        BTreeMap::from([
            ("customer".to_string(), CX1.to_string()),
            ("order".to_string(), OX1.to_string())
        ])
    );
    assert!(res.merges.is_empty());
    // Smallest entity type name first.
    assert_eq!(r.lookup("x1").as_deref(), Some(CX1));
    assert_eq!(r.hints(OX1), cluster_hints(&[("order_id", &["x1"])]));
}

/// Scenario S5 of D5: signup a, signup 555, link a+555.
fn s5(defs: &Definitions) -> [NormalizedEvent; 3] {
    [
        app(defs, "signup", "01-01 10:00", json!({"email": "a@x.com"})),
        app(defs, "signup", "01-02 10:00", json!({"phone": "555"})),
        app(
            defs,
            "link",
            "01-03 10:00",
            json!({"email": "a@x.com", "phone": "555"}),
        ),
    ]
}

fn assert_s5_outcome(store: &MemoryIdentity, assigned: &[String]) {
    assert_eq!(assigned, [EA, P5, EA]);
    assert_eq!(store.merge_log(), vec![log_row(P5, EA, "01-03 10:00")]);
    assert_eq!(
        mappings(store),
        vec![
            (key("customer", "email", "a@x.com"), EA.to_string()),
            (key("customer", "phone", "555"), EA.to_string()),
        ]
    );
}

// CONTRACTS D5
#[test]
fn identity_discovered_merge_priority_winner() {
    let defs = cust();
    let events = s5(&defs);
    // One resolve pass over the three events.
    let mut r = resolver(&defs, MemoryIdentity::new());
    let mut assigned = Vec::new();
    let mut merges = Vec::new();
    for e in &events {
        let (id, m) = customer_of(&mut r, e);
        assigned.push(id);
        merges.extend(m);
    }
    // Ea wins although P5 < Ea: the email key outranks the phone key.
    assert_eq!(merges, vec![merge(P5, EA, "01-03 10:00")]);
    assert_s5_outcome(r.store(), &assigned);
    assert_eq!(r.store().merged_into(P5).as_deref(), Some(EA));

    // One event per job: the third reports the same merge, same identity and assignments.
    let mut store = MemoryIdentity::new();
    let per_job: Vec<(String, Vec<Merge>)> = events
        .iter()
        .map(|e| job(&defs, &mut store, |r| customer_of(r, e)))
        .collect();
    assert_eq!(per_job[2].1, vec![merge(P5, EA, "01-03 10:00")]);
    assert!(per_job[0].1.is_empty() && per_job[1].1.is_empty());
    let assigned: Vec<String> = per_job.into_iter().map(|(id, _)| id).collect();
    assert_s5_outcome(&store, &assigned);
}

// CONTRACTS D5 (the link first: no merge)
#[test]
fn link_first_starts_the_cluster_without_merge() {
    let defs = cust();
    let [signup_a, signup_p, link] = s5(&defs);
    let mut store = MemoryIdentity::new();
    for e in [&link, &signup_a, &signup_p] {
        let (id, merges) = job(&defs, &mut store, |r| customer_of(r, e));
        assert_eq!(id, EA);
        assert!(merges.is_empty());
    }
    assert!(store.merge_log().is_empty());
    assert_eq!(store.entity_type(P5), None, "P5 never exists");
    assert_eq!(store.entity_type(EA).as_deref(), Some("customer"));
}

// CONTRACTS D6
#[test]
fn enrichment_is_not_a_merge_but_rename_is() {
    let defs = cust();
    let link = app(
        &defs,
        "link",
        "01-02",
        json!({"email": "a@x.com", "phone": "555"}),
    );

    // Enrichment: a phone key cannot outrank Ea's email anchor.
    let mut store = MemoryIdentity::new();
    job(&defs, &mut store, |r| {
        customer_of(
            r,
            &app(&defs, "signup", "01-01", json!({"email": "a@x.com"})),
        )
    });
    let (id, merges) = job(&defs, &mut store, |r| customer_of(r, &link));
    assert_eq!((id.as_str(), merges), (EA, vec![]));
    assert!(store.merge_log().is_empty());
    assert_eq!(store.entity_type(P5), None);
    let r = resolver(&defs, store);
    assert_eq!(
        r.hints(EA),
        cluster_hints(&[("email", &["a@x.com"]), ("phone", &["555"])])
    );

    // Rename: the new email key outranks P5's phone anchor.
    let mut store = MemoryIdentity::new();
    job(&defs, &mut store, |r| {
        customer_of(r, &app(&defs, "signup", "01-01", json!({"phone": "555"})))
    });
    let (id, merges) = job(&defs, &mut store, |r| customer_of(r, &link));
    assert_eq!(id, EA);
    assert_eq!(merges, vec![merge(P5, EA, "01-02")]);
    assert_eq!(store.merge_log(), vec![log_row(P5, EA, "01-02")]);
    assert_eq!(
        store.keys_of(EA),
        vec![
            key("customer", "email", "a@x.com"),
            key("customer", "phone", "555")
        ]
    );
    assert!(store.keys_of(P5).is_empty());
}

fn d7(order: &str) -> (Vec<Merge>, MemoryIdentity) {
    let defs = entity_p(order);
    let mut r = resolver(&defs, MemoryIdentity::new());
    let ts = at("01-01");
    let singles = [("a", "1", P1), ("b", "2", P2), ("cc", "3", P3)];
    for (f, v, id) in singles {
        let res = r.resolve(&hints("p", &[(f, v)]), ts);
        assert_eq!(res.entities["p"], id);
        assert!(res.merges.is_empty());
    }
    let res = r.resolve(
        &hints("p", &[("a", "1"), ("b", "2"), ("cc", "3")]),
        at("01-02"),
    );
    (res.merges, r.into_store())
}

// CONTRACTS D7
#[test]
fn multi_way_merge_follows_declaration_order() {
    let (merges, store) = d7("a: {}, b: {}, cc: {}");
    assert_eq!(merges, vec![merge(P2, P1, "01-02"), merge(P3, P1, "01-02")]);
    assert!(store.mappings().all(|(_, id)| id == P1));
    assert_eq!(store.mappings().count(), 3);

    let (merges, store) = d7("cc: {}, b: {}, a: {}");
    assert_eq!(merges, vec![merge(P2, P3, "01-02"), merge(P1, P3, "01-02")]);
    assert!(store.mappings().all(|(_, id)| id == P3));
}

// CONTRACTS D8
#[test]
fn separate_events_never_merge() {
    let defs = cust();
    let a = app(&defs, "signup", "01-01", json!({"email": "a@x.com"}));
    let p = app(&defs, "signup", "01-02", json!({"phone": "555"}));
    for order in [[&a, &p], [&p, &a]] {
        let mut r = resolver(&defs, MemoryIdentity::new());
        for e in order {
            assert!(customer_of(&mut r, e).1.is_empty());
        }
        assert!(r.store().merge_log().is_empty());
        assert_eq!(r.lookup("a@x.com").as_deref(), Some(EA));
        assert_eq!(r.lookup("555").as_deref(), Some(P5));
    }
}

// CONTRACTS D9
#[test]
fn after_a_merge_both_keys_reach_the_winner() {
    let defs = cust();
    let mut r = resolver(&defs, MemoryIdentity::new());
    for e in &s5(&defs) {
        customer_of(&mut r, e);
    }
    let upgrade = app(
        &defs,
        "upgrade",
        "01-05",
        json!({"email": "a@x.com", "plan": "pro", "mrr": 5}),
    );
    assert_eq!(customer_of(&mut r, &upgrade), (EA.to_string(), vec![]));
    assert_eq!(r.lookup("555").as_deref(), Some(EA));
    assert_eq!(r.lookup("a@x.com").as_deref(), Some(EA));
}

/// D14's events: signup a, signup 555, (merge Ea → P5 at 01-04), link a+555, link b+555.
fn d14_events(defs: &Definitions) -> [NormalizedEvent; 4] {
    [
        app(defs, "signup", "01-01 10:00", json!({"email": "a@x.com"})),
        app(defs, "signup", "01-02 10:00", json!({"phone": "555"})),
        app(
            defs,
            "link",
            "01-05",
            json!({"email": "a@x.com", "phone": "555"}),
        ),
        app(
            defs,
            "link",
            "01-06",
            json!({"email": "b@x.com", "phone": "555"}),
        ),
    ]
}

fn assert_d14_outcome(store: &MemoryIdentity) {
    // merge_log rows by ascending `from`: P5 (c8eb…) before Ea (fbf2…).
    assert_eq!(
        store.merge_log(),
        vec![log_row(P5, EB, "01-06"), log_row(EA, P5, "01-04")]
    );
    assert_eq!(store.mappings().count(), 3);
    assert!(store.mappings().all(|(_, id)| id == EB));
}

// CONTRACTS D14
#[test]
fn explicit_merge_against_priority_then_rename() {
    let defs = cust();
    let [signup_a, signup_p, link_a, link_b] = d14_events(&defs);
    let mut store = MemoryIdentity::new();
    job(&defs, &mut store, |r| {
        assert_eq!(customer_of(r, &signup_a).0, EA);
        assert_eq!(customer_of(r, &signup_p).0, P5);
    });
    let outcome = job(&defs, &mut store, |r| r.merge(EA, P5, at("01-04"))).unwrap();
    assert_eq!(outcome.recorded, Some(merge(EA, P5, "01-04")));
    assert!(
        store.mappings().all(|(_, id)| id == P5),
        "both keys map to P5"
    );
    assert_eq!(store.mappings().count(), 2);
    // P5 keeps its anchor: the email key taken over from Ea does not rank it.
    assert_eq!(
        job(&defs, &mut store, |r| customer_of(r, &link_a)),
        (P5.to_string(), vec![])
    );
    // A new email key outranks P5's own phone anchor: P5 is renamed to Eb.
    let (id, merges) = job(&defs, &mut store, |r| customer_of(r, &link_b));
    assert_eq!(id, EB);
    assert_eq!(merges, vec![merge(P5, EB, "01-06")]);
    assert_d14_outcome(&store);
}

// CONTRACTS D14 (identity reset), PIPELINE §11.3
#[test]
fn stored_merge_replays_at_its_place_after_identity_reset() {
    let defs = cust();
    let [signup_a, signup_p, link_a, link_b] = d14_events(&defs);
    let mut r = resolver(&defs, MemoryIdentity::new());
    customer_of(&mut r, &signup_a);
    customer_of(&mut r, &signup_p);
    let system = r.merge(EA, P5, at("01-04")).unwrap().event;
    assert_eq!(
        system,
        SystemMerge {
            from_entity_id: EA.into(),
            into_entity_id: P5.into(),
            from_hints: BTreeMap::from([(
                "customer".into(),
                cluster_hints(&[("email", &["a@x.com"])])
            )]),
            into_hints: BTreeMap::from([(
                "customer".into(),
                cluster_hints(&[("phone", &["555"])])
            )]),
            timestamp: at("01-04"),
        }
    );
    customer_of(&mut r, &link_a);
    customer_of(&mut r, &link_b);
    let before = r.into_store();

    // Identity reset: replay the whole ledger into an empty store, the system event in place.
    let mut r = resolver(&defs, MemoryIdentity::new());
    assert_eq!(customer_of(&mut r, &signup_a), (EA.to_string(), vec![]));
    assert_eq!(customer_of(&mut r, &signup_p), (P5.to_string(), vec![]));
    assert_eq!(r.replay_merge(&system), Some(merge(EA, P5, "01-04")));
    assert_eq!(customer_of(&mut r, &link_a), (P5.to_string(), vec![]));
    assert_eq!(
        customer_of(&mut r, &link_b),
        (EB.to_string(), vec![merge(P5, EB, "01-06")])
    );
    assert_d14_outcome(r.store());
    assert_eq!(mappings(r.store()), mappings(&before));
}

/// D10's ledger: signup bob, signup alice, upgrade alice.
fn d10_events(defs: &Definitions) -> [NormalizedEvent; 3] {
    [
        app(defs, "signup", "01-01 10:00", json!({"email": "bob@x.com"})),
        app(
            defs,
            "signup",
            "01-15 10:00",
            json!({"email": "alice@x.com"}),
        ),
        app(
            defs,
            "upgrade",
            "01-15 10:01",
            json!({"email": "alice@x.com", "plan": "pro", "mrr": 10}),
        ),
    ]
}

// CONTRACTS D10, CONTRACTS D12 (identity parts), PIPELINE §11.3
#[test]
fn explicit_merge_survives_identity_reset() {
    let defs = cust();
    let events = d10_events(&defs);
    let mut r = resolver(&defs, MemoryIdentity::new());
    for e in &events {
        customer_of(&mut r, e);
    }
    let outcome = r.merge(A, B, at("02-01")).unwrap();
    assert_eq!(outcome.recorded, Some(merge(A, B, "02-01")));
    assert_eq!(r.store().merge_log(), vec![log_row(A, B, "02-01")]);
    // Values of one field by ascending derived id: B (80fc…) before A (9777…).
    assert_eq!(
        r.hints(B),
        cluster_hints(&[("email", &["bob@x.com", "alice@x.com"])])
    );
    assert!(r.hints(A).is_empty());

    let mut fresh = resolver(&defs, MemoryIdentity::new());
    let ids: Vec<String> = events
        .iter()
        .map(|e| customer_of(&mut fresh, e).0)
        .collect();
    assert_eq!(ids, [B, A, A]);
    assert_eq!(
        fresh.replay_merge(&outcome.event),
        Some(merge(A, B, "02-01"))
    );
    assert_eq!(fresh.store().merge_log(), r.store().merge_log());
    assert_eq!(mappings(fresh.store()), mappings(r.store()));
    // Replaying it again: both sides resolve to B, so it is skipped.
    assert_eq!(fresh.replay_merge(&outcome.event), None);
}

// PIPELINE §11.3 (priority order per side; stored ids when hints do not resolve)
#[test]
fn replay_takes_the_first_resolvable_key_in_priority_order() {
    let defs = cust();
    let mut r = resolver(&defs, MemoryIdentity::new());
    for (field, value) in [
        ("email", "a@x.com"),
        ("phone", "555"),
        ("email", "bob@x.com"),
    ] {
        r.resolve(&hints("customer", &[(field, value)]), at("01-01"));
    }
    // Stored order lists the phone first; priority order takes the email key (Ea, not P5).
    let from_hints = BTreeMap::from([(
        "customer".to_string(),
        cluster_hints(&[("phone", &["555"]), ("email", &["gone@x.com", "a@x.com"])]),
    )]);
    let event = SystemMerge {
        from_entity_id: "stored-from".into(),
        into_entity_id: "stored-into".into(),
        from_hints,
        into_hints: BTreeMap::from([(
            "customer".into(),
            cluster_hints(&[("email", &["bob@x.com"])]),
        )]),
        timestamp: at("02-01"),
    };
    assert_eq!(r.replay_merge(&event), Some(merge(EA, B, "02-01")));
    assert_eq!(
        r.store().get(&key("customer", "phone", "555")).as_deref(),
        Some(P5)
    );

    // Nothing resolves on the `from` side: the stored id is used.
    let unresolved = SystemMerge {
        from_entity_id: P5.into(),
        from_hints: BTreeMap::from([(
            "customer".into(),
            cluster_hints(&[("email", &["gone@x.com"])]),
        )]),
        ..event
    };
    assert_eq!(r.replay_merge(&unresolved), Some(merge(P5, B, "02-01")));
    assert!(r.store().mappings().all(|(_, id)| id == B));
}

// CONTRACTS D17, CONTRACTS D11
#[test]
fn invalid_explicit_merges_change_nothing() {
    let defs = cust();
    let mut r = resolver(&defs, MemoryIdentity::new());
    for e in &d10_events(&defs) {
        customer_of(&mut r, e);
    }
    r.merge(A, B, at("02-01")).unwrap();
    let order = bill(
        &defs,
        "order.created",
        "01-20",
        json!({"id": "o1", "customer_email": "bob@x.com", "amount": 5}),
    );
    let res = r.resolve(&order.hints, order.timestamp);
    assert_eq!(res.entities["order"], O1);
    assert_eq!(res.entities["customer"], B);

    let before = (mappings(r.store()), r.store().merge_log());
    let cases = [
        (
            B,
            B,
            "IdentityError",
            format!("Cannot merge entity '{B}' into itself"),
        ),
        (
            O1,
            B,
            "IdentityError",
            format!("Cannot merge order '{O1}' into customer '{B}'"),
        ),
        (
            B,
            O1,
            "IdentityError",
            format!("Cannot merge customer '{B}' into order '{O1}'"),
        ),
        (
            B,
            "nope",
            "NotFoundError",
            "Surviving entity 'nope' not found".to_string(),
        ),
        (
            "x",
            "nope",
            "NotFoundError",
            "Surviving entity 'nope' not found".to_string(),
        ),
        // A merged-away entity is no longer a surviving entity.
        (
            B,
            A,
            "NotFoundError",
            format!("Surviving entity '{A}' not found"),
        ),
    ];
    for (from, into, class, message) in cases {
        let err: IdentityError = r.merge(from, into, at("02-02")).unwrap_err();
        assert_eq!(
            (err.class(), err.to_string()),
            (class, message),
            "merge({from}, {into})"
        );
        assert_eq!((mappings(r.store()), r.store().merge_log()), before);
    }
    // The self-merge check comes first, even for an unknown id.
    assert!(matches!(
        r.merge("nope", "nope", at("02-02")),
        Err(IdentityError::SelfMerge { .. })
    ));
}

// CONTRACTS D11, CONTRACTS D16 (identity parts), PIPELINE §11.2
#[test]
fn repeated_or_unknown_from_records_no_merge_log_row() {
    let defs = cust();
    let mut r = resolver(&defs, MemoryIdentity::new());
    for e in &d10_events(&defs) {
        customer_of(&mut r, e);
    }
    r.merge(A, B, at("02-01")).unwrap();
    let again = r.merge(A, B, at("02-02")).unwrap();
    assert_eq!(again.recorded, None);
    assert!(
        again.event.from_hints["customer"].is_empty(),
        "A has no keys left"
    );
    let ghost = r.merge("never-seen", B, at("02-02")).unwrap();
    assert_eq!(ghost.recorded, None);
    assert_eq!(r.store().merge_log(), vec![log_row(A, B, "02-01")]);
    assert_eq!(r.store().keys_of(B).len(), 2);
}

// PIPELINE §5.2 step 0 [FIX P24]
#[test]
fn undefined_types_and_undeclared_fields_are_ignored() {
    let defs = cust();
    let mut r = resolver(&defs, MemoryIdentity::new());
    let mut h = hints("customer", &[("nickname", "al"), ("email", "alice@x.com")]);
    h.insert(
        "ghost".into(),
        FastIndexMap::from_iter([("email".to_string(), "alice@x.com".to_string())]),
    );
    let res = r.resolve(&h, at("01-01"));
    assert_eq!(
        res.entities,
        BTreeMap::from([("customer".to_string(), A.to_string())])
    );
    assert_eq!(
        mappings(r.store()),
        vec![(key("customer", "email", "alice@x.com"), A.to_string())]
    );
    let only_undeclared = hints("customer", &[("nickname", "al")]);
    assert!(r.resolve(&only_undeclared, at("01-02")).entities.is_empty());
    assert_eq!(r.store().mappings().count(), 1);
}

// PIPELINE §12.1 steps 2, 3, 6; CONTRACTS D13 (identity part)
#[test]
fn erase_removes_the_cascade_and_recreation_reuses_the_id() {
    let defs = cust();
    let mut r = resolver(&defs, MemoryIdentity::new());
    for e in &s5(&defs) {
        customer_of(&mut r, e);
    }
    // Erasing the loser collects no keys (they moved to the winner) and drops its merge.
    let mut loser_only = resolver(&defs, r.store().clone());
    let erased = loser_only.erase(P5);
    assert_eq!(
        (erased.members, erased.keys, erased.merged_into),
        (vec![P5.to_string()], vec![], Some(EA.to_string()))
    );
    assert!(loser_only.store().merge_log().is_empty());
    assert_eq!(loser_only.store().mappings().count(), 2);

    let erased = r.erase(EA);
    assert_eq!(erased.members, [EA, P5]);
    assert_eq!(
        erased.keys,
        [
            key("customer", "email", "a@x.com"),
            key("customer", "phone", "555")
        ]
    );
    assert_eq!(erased.merged_into, None);
    assert_eq!(r.store().mappings().count(), 0);
    assert!(r.store().merge_log().is_empty());
    assert!(matches!(
        r.merge(P5, EA, at("03-01")),
        Err(IdentityError::SurvivorNotFound { .. })
    ));
    let again = app(&defs, "signup", "03-01", json!({"email": "a@x.com"}));
    assert_eq!(customer_of(&mut r, &again), (EA.to_string(), vec![]));
}

/// The keys of D7's entity `p`: field × value pool.
const FIELDS: [&str; 3] = ["a", "b", "cc"];

/// Connected components of the keys that events link, each with its best key's derived id.
fn expected_clusters(events: &[Vec<(usize, u8)>], r: &Ident) -> BTreeMap<Key, String> {
    let mut parent: BTreeMap<Key, Key> = BTreeMap::new();
    fn root(parent: &BTreeMap<Key, Key>, k: &Key) -> Key {
        let mut k = k.clone();
        while parent[&k] != k {
            k = parent[&k].clone();
        }
        k
    }
    for event in events {
        let keys: Vec<Key> = event
            .iter()
            .map(|(f, v)| key("p", FIELDS[*f], &v.to_string()))
            .collect();
        for k in &keys {
            parent.entry(k.clone()).or_insert_with(|| k.clone());
        }
        for k in &keys[1..] {
            let (x, y) = (root(&parent, &keys[0]), root(&parent, k));
            parent.insert(x, y);
        }
    }
    let mut best: BTreeMap<Key, (defacto_core::identity::Rank, Key)> = BTreeMap::new();
    for k in parent.keys() {
        let rank = r.rank(k).unwrap();
        let entry = best
            .entry(root(&parent, k))
            .or_insert((rank.clone(), k.clone()));
        if rank < entry.0 {
            *entry = (rank, k.clone());
        }
    }
    parent
        .keys()
        .map(|k| (k.clone(), best[&root(&parent, k)].0.id.clone()))
        .collect()
}

fn event_hints(event: &[(usize, u8)]) -> Hints {
    let fields: Vec<(&str, String)> = event
        .iter()
        .map(|(f, v)| (FIELDS[*f], v.to_string()))
        .collect();
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(f, v)| (*f, v.as_str())).collect();
    hints("p", &pairs)
}

fn arb_events() -> impl Strategy<Value = Vec<Vec<(usize, u8)>>> {
    // An event hints a random non-empty subset of the fields, each with a value from 0..3.
    let event = proptest::collection::btree_map(0usize..3, 0u8..3, 1..=3)
        .prop_map(|m| m.into_iter().collect::<Vec<_>>());
    proptest::collection::vec(event, 1..14)
}

proptest! {
    // CONTRACTS D1, CONTRACTS D8; PIPELINE §5.2, §5.3 (final clusters and their ids do not depend on
    // order or batching; a cluster carries the derived id of its highest-priority key)
    #[test]
    fn clusters_do_not_depend_on_order_or_batching(
        (events, shuffled) in arb_events().prop_flat_map(|e| (Just(e.clone()), Just(e).prop_shuffle())),
        cuts in proptest::collection::vec(0usize..14, 0..4),
    ) {
        let defs = entity_p("a: {}, b: {}, cc: {}");
        let ts = at("01-01");

        // One pass, given order.
        let mut r = resolver(&defs, MemoryIdentity::new());
        let mut merges = 0;
        for e in &events {
            let res = r.resolve(&event_hints(e), ts);
            // The event's id is the winner its keys map to right after it.
            for (f, v) in e {
                let mapped = r.store().get(&key("p", FIELDS[*f], &v.to_string()));
                prop_assert_eq!(mapped.as_ref(), Some(&res.entities["p"]));
            }
            merges += res.merges.len();
        }
        let expected = expected_clusters(&events, &r);
        let one_pass = mappings(r.store());
        let got: BTreeMap<Key, String> = one_pass.iter().cloned().collect();
        prop_assert_eq!(&got, &expected);
        // Every merge retires exactly one id for good.
        prop_assert_eq!(r.store().merge_log().len(), merges);

        // Shuffled order, cut into batches, each a new job over the same store.
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(shuffled.len())).collect();
        cuts.push(0);
        cuts.push(shuffled.len());
        cuts.sort();
        let mut store = MemoryIdentity::new();
        for w in cuts.windows(2) {
            job(&defs, &mut store, |r| {
                for e in &shuffled[w[0]..w[1]] {
                    r.resolve(&event_hints(e), ts);
                }
            });
        }
        prop_assert_eq!(mappings(&store), one_pass);
    }
}
