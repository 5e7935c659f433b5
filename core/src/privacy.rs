//! The pure half of `erase` and `redact` (PIPELINE.md §12): which stored JSON holds an erased
//! person's hint values, scrubbing those values out of rows that must stay, and the redaction
//! treatments of sensitive properties.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;

use crate::definitions::{Definitions, Entity};
use crate::normalize::normalize_hint;
use crate::value::Instant;

/// The erased hint values (§12.1 step 3) and the identity `normalize` expressions of the
/// fields they were keyed under, in every registered version: a string matches when it equals
/// an erased value as it is or after one of those expressions.
pub struct ErasedValues<'a> {
    /// (entity type, field) → erased values of that key.
    values: BTreeMap<(String, String), BTreeSet<String>>,
    /// Entity definitions of each entity type, one per version that declares it.
    entities: BTreeMap<String, Vec<&'a Entity>>,
    as_of: Instant,
}

impl<'a> ErasedValues<'a> {
    /// `keys` are the (entity type, field, value) identity keys of the cascade set.
    pub fn new(
        keys: impl IntoIterator<Item = (String, String, String)>,
        versions: &'a [Definitions],
        as_of: Instant,
    ) -> Self {
        let mut values: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for (t, f, v) in keys {
            values.entry((t, f)).or_default().insert(v);
        }
        let mut entities: BTreeMap<String, Vec<&Entity>> = BTreeMap::new();
        for defs in versions {
            for (name, e) in &defs.entities {
                entities.entry(name.clone()).or_default().push(e);
            }
        }
        ErasedValues {
            values,
            entities,
            as_of,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Every erased value, as stored.
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.values.values().flatten()
    }

    /// Whether `text` is an erased value, as it is or after a `normalize` of its key's field.
    pub fn matches(&self, text: &str) -> bool {
        self.values.iter().any(|((t, f), values)| {
            values.contains(text)
                || self
                    .entities
                    .get(t)
                    .into_iter()
                    .flatten()
                    .any(|e| values.contains(&normalize_hint(e, f, text.to_string(), self.as_of)))
        })
    }

    /// Whether some string value of `json`, at any depth, matches (object keys are not values).
    pub fn found_in(&self, json: &Json) -> bool {
        match json {
            Json::String(s) => self.matches(s),
            Json::Array(items) => items.iter().any(|j| self.found_in(j)),
            Json::Object(map) => map.values().any(|j| self.found_in(j)),
            _ => false,
        }
    }

    /// `json` with every matching string value replaced by null; `None` when nothing matched.
    pub fn scrub(&self, json: &Json) -> Option<Json> {
        let mut out = json.clone();
        self.scrub_in(&mut out).then_some(out)
    }

    fn scrub_in(&self, json: &mut Json) -> bool {
        match json {
            Json::String(s) if self.matches(s) => {
                *json = Json::Null;
                true
            }
            Json::Array(items) => items
                .iter_mut()
                .fold(false, |changed, j| self.scrub_in(j) | changed),
            Json::Object(map) => map
                .values_mut()
                .fold(false, |changed, j| self.scrub_in(j) | changed),
            _ => false,
        }
    }

    /// JSON text with matching values scrubbed; `None` when unchanged or not JSON.
    pub fn scrub_text(&self, text: &str) -> Option<String> {
        let json: Json = serde_json::from_str(text).ok()?;
        self.scrub(&json).map(|j| j.to_string())
    }
}

/// What a sensitive property's value becomes when redacted (§12.2): `redact` (the default) →
/// `"[REDACTED]"`; `hash` → `"sha256:"` + hex SHA-256 of the text; `mask` → an email keeps its
/// first character and domain (`a***@example.com`), other text its last four characters.
pub fn redacted(treatment: Option<&str>, text: &str) -> String {
    match treatment {
        Some("hash") => format!("sha256:{}", crate::canonical::sha256_hex(text)),
        Some("mask") => mask(text),
        _ => "[REDACTED]".to_string(),
    }
}

fn mask(text: &str) -> String {
    if let Some(at) = text.rfind('@') {
        let first: String = text[..at].chars().take(1).collect();
        return format!("{first}***{}", &text[at..]);
    }
    let n = text.chars().count();
    if n <= 4 {
        return "*".repeat(n);
    }
    text.chars()
        .enumerate()
        .map(|(i, c)| if i + 4 < n { '*' } else { c })
        .collect()
}

/// Replaces the top-level keys of `object` named in `fields` (only keys that exist, [FIX P16])
/// with their redacted text; returns whether any key was replaced. A value that is already the
/// redacted text stays (redaction is idempotent).
pub fn redact_keys(object: &mut Json, fields: &BTreeMap<String, Option<String>>) -> bool {
    let Json::Object(map) = object else {
        return false;
    };
    let mut changed = false;
    for (key, treatment) in fields {
        if let Some(v) = map.get_mut(key) {
            if v.is_null() {
                continue;
            }
            let text = match &*v {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            if is_redacted(treatment.as_deref(), &text) {
                continue;
            }
            *v = Json::String(redacted(treatment.as_deref(), &text));
            changed = true;
        }
    }
    changed
}

/// Whether `text` is already a redaction output of `treatment`.
fn is_redacted(treatment: Option<&str>, text: &str) -> bool {
    match treatment {
        Some("hash") => text.starts_with("sha256:") && text.len() == 71,
        Some("mask") => {
            text.contains("***")
                || (!text.is_empty()
                    && text
                        .chars()
                        .take(text.chars().count().saturating_sub(4))
                        .all(|c| c == '*'))
        }
        _ => text == "[REDACTED]",
    }
}

/// The sensitive properties of an entity type and their treatments.
pub fn sensitive_fields(entity: &Entity) -> BTreeMap<String, Option<String>> {
    entity
        .properties
        .iter()
        .filter(|(_, p)| p.sensitive.is_some())
        .map(|(name, p)| (name.clone(), p.treatment.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn treatments() {
        assert_eq!(redacted(None, "x"), "[REDACTED]");
        assert_eq!(
            redacted(Some("mask"), "alice@example.com"),
            "a***@example.com"
        );
        assert_eq!(redacted(Some("mask"), "555-123-4567"), "********4567");
        assert_eq!(redacted(Some("mask"), "abcd"), "****");
        assert!(redacted(Some("hash"), "a").starts_with("sha256:ca978112"));
    }

    #[test]
    fn only_existing_keys_are_redacted_once() {
        let fields = BTreeMap::from([("email".to_string(), None), ("plan".to_string(), None)]);
        let mut row = json!({"email": "a@x.com", "n": 1});
        assert!(redact_keys(&mut row, &fields));
        assert_eq!(row, json!({"email": "[REDACTED]", "n": 1}));
        assert!(
            !redact_keys(&mut row, &fields),
            "a second redaction changes nothing"
        );
    }

    #[test]
    fn erased_values_match_at_any_depth_but_not_keys() {
        let versions: Vec<Definitions> = Vec::new();
        let erased = ErasedValues::new(
            [("customer".into(), "email".into(), "alice@x.com".into())],
            &versions,
            chrono::Utc::now(),
        );
        let raw = json!({"a": [{"b": "alice@x.com"}], "alice@x.com": 1, "c": "bob"});
        assert!(erased.found_in(&raw));
        assert_eq!(
            erased.scrub(&raw),
            Some(json!({"a": [{"b": null}], "alice@x.com": 1, "c": "bob"}))
        );
        assert_eq!(erased.scrub(&json!({"c": "bob"})), None);
    }
}
