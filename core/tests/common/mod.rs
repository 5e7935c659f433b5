//! Helpers shared by the engine tests: the CONTRACTS §0 notation for instants and raw events,
//! and the CUST fixture.

#![allow(dead_code)]

use std::path::Path;

use chrono::{TimeZone, Utc};
use defacto_core::definitions::Definitions;
use defacto_core::value::{timestamp_text, Instant};
use serde_json::{json, Value as Json};

/// `MM-DD hh:mm` of 2024 (CONTRACTS §0 notation); `MM-DD` alone is midnight.
pub fn t(s: &str) -> Instant {
    let (date, time) = s.split_once(' ').unwrap_or((s, "00:00"));
    let (m, d) = date.split_once('-').unwrap();
    let (h, min) = time.split_once(':').unwrap();
    Utc.with_ymd_and_hms(
        2024,
        m.parse().unwrap(),
        d.parse().unwrap(),
        h.parse().unwrap(),
        min.parse().unwrap(),
        0,
    )
    .unwrap()
}

/// The canonical text of `t(s)`.
pub fn iso(s: &str) -> String {
    timestamp_text(&t(s))
}

/// A raw event of a source whose type and time fields are named `type_field`/`ts_field`.
fn raw(type_field: &str, ts_field: &str, ty: &str, at: &str, extra: Json) -> Json {
    let mut raw = json!({ type_field: ty, ts_field: iso(at) });
    raw.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    raw
}

/// `app(type, ts, k=v, …)` of CONTRACTS §0.
pub fn app(ty: &str, at: &str, extra: Json) -> Json {
    raw("type", "ts", ty, at, extra)
}

/// `bill(raw_type, ts, …)` of CONTRACTS §0.
pub fn bill(raw_type: &str, at: &str, extra: Json) -> Json {
    raw("event", "created_at", raw_type, at, extra)
}

pub fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The CUST definitions.
pub fn cust() -> Definitions {
    Definitions::load(&fixture("cust")).unwrap()
}

/// CUST with text replacements applied to its entity and source files.
pub fn cust_with(entities: &[(&str, &str)], sources: &[(&str, &str)]) -> Definitions {
    let dir = fixture("cust");
    let mut e = std::fs::read_to_string(dir.join("entities/customer.yaml")).unwrap();
    for (from, to) in entities {
        assert!(e.contains(from), "{from}");
        e = e.replace(from, to);
    }
    let mut s = std::fs::read_to_string(dir.join("sources/app.yaml")).unwrap();
    for (from, to) in sources {
        assert!(s.contains(from), "{from}");
        s = s.replace(from, to);
    }
    let indent = |x: &str| x.lines().map(|l| format!("  {l}\n")).collect::<String>();
    Definitions::from_yaml_str(&format!(
        "entities:\n{}sources:\n{}",
        indent(&e),
        indent(&s)
    ))
    .unwrap()
}
