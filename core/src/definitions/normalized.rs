//! The normalized definition document (DEFINITIONS.md §6), the three hashes (§8.3) and the
//! content-derived version name (§8.1). The rules decide which edits change which hash, so
//! they follow the spec to the letter: null members dropped, empty sections omitted,
//! `transition`/`increment` conditions dropped, mappings and hints copied verbatim.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

use super::model::*;
use crate::canonical::{sha256_hex, to_canonical_json, to_canonical_json_ascii};
use crate::fasthash::FastIndexMap;

/// The normalized document of a definition set.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizedDocument(pub Json);

/// The three definition hashes (64 lower-case hex characters each).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hashes {
    pub definition_hash: String,
    pub source_hash: String,
    pub identity_hash: String,
}

impl NormalizedDocument {
    pub fn of(defs: &Definitions) -> NormalizedDocument {
        let mut doc = Map::new();
        if !defs.entities.is_empty() {
            let entities = defs
                .entities
                .iter()
                .map(|(n, e)| (n.clone(), entity(e)))
                .collect();
            doc.insert("entities".into(), Json::Object(entities));
        }
        if !defs.sources.is_empty() {
            let sources = defs
                .sources
                .iter()
                .map(|(n, s)| (n.clone(), source(s)))
                .collect();
            doc.insert("sources".into(), Json::Object(sources));
        }
        if !defs.schemas.is_empty() {
            let schemas = defs
                .schemas
                .iter()
                .map(|(n, s)| (n.clone(), schema(s)))
                .collect();
            doc.insert("schemas".into(), Json::Object(schemas));
        }
        NormalizedDocument(Json::Object(doc))
    }

    pub fn json(&self) -> &Json {
        &self.0
    }

    fn section(&self, key: &str) -> Json {
        self.0
            .get(key)
            .cloned()
            .unwrap_or_else(|| Json::Object(Map::new()))
    }

    pub fn hashes(&self) -> Hashes {
        let entities = self.section("entities");
        let identity: Map<String, Json> = entities
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(name, body)| {
                        (
                            name.clone(),
                            json!({
                                "identity": body.get("identity").cloned().unwrap_or(Json::Null),
                                "identity_order": body.get("identity_order").cloned().unwrap_or(Json::Null),
                            }),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Hashes {
            definition_hash: sha256_hex(&to_canonical_json(&entities)),
            source_hash: sha256_hex(&to_canonical_json(&self.section("sources"))),
            identity_hash: sha256_hex(&to_canonical_json(&Json::Object(identity))),
        }
    }

    /// The content-derived version name (§8.1): 8 hex characters over the ASCII-escaped
    /// canonical JSON of the whole document.
    pub fn version_name(&self) -> String {
        sha256_hex(&to_canonical_json_ascii(&self.0))[..8].to_string()
    }
}

fn insert_some(m: &mut Map<String, Json>, key: &str, v: Option<Json>) {
    if let Some(v) = v.filter(|v| !v.is_null()) {
        m.insert(key.into(), v);
    }
}

fn text(s: &Option<String>) -> Option<Json> {
    s.as_ref().map(|s| Json::String(s.clone()))
}

fn expr_text(e: &Option<crate::expr::Expr>) -> Option<Json> {
    e.as_ref().map(|e| Json::String(e.text().to_string()))
}

fn entity(e: &Entity) -> Json {
    let mut m = Map::new();
    m.insert("starts".into(), Json::String(e.starts.clone()));
    let identity: Map<String, Json> = e
        .identity
        .iter()
        .map(|(field, spec)| {
            let mut f = Map::new();
            f.insert("match".into(), Json::String(spec.match_mode.clone()));
            insert_some(&mut f, "normalize", expr_text(&spec.normalize));
            (field.clone(), Json::Object(f))
        })
        .collect();
    m.insert("identity".into(), Json::Object(identity));
    m.insert(
        "identity_order".into(),
        Json::Array(e.identity.keys().map(|k| Json::String(k.clone())).collect()),
    );
    if !e.properties.is_empty() {
        m.insert("properties".into(), properties(&e.properties));
    }
    let states: Map<String, Json> = e
        .states
        .iter()
        .map(|(name, s)| {
            let mut sm = Map::new();
            if !s.when.is_empty() {
                sm.insert("when".into(), handlers(&s.when));
            }
            if !s.after.is_empty() {
                let rules = s
                    .after
                    .iter()
                    .map(|r| {
                        json!({
                            "type": r.kind.name(),
                            "threshold": r.threshold_text,
                            "effects": effects(&r.effects),
                        })
                    })
                    .collect();
                sm.insert("after".into(), Json::Array(rules));
            }
            (name.clone(), Json::Object(sm))
        })
        .collect();
    m.insert("states".into(), Json::Object(states));
    if !e.relationships.is_empty() {
        let rels = e
            .relationships
            .iter()
            .map(|r| {
                let mut rm = Map::new();
                rm.insert("type".into(), Json::String(r.relationship.clone()));
                rm.insert("target".into(), Json::String(r.target.clone()));
                rm.insert("cardinality".into(), Json::String(r.cardinality.clone()));
                if !r.properties.is_empty() {
                    rm.insert("properties".into(), properties(&r.properties));
                }
                Json::Object(rm)
            })
            .collect();
        m.insert("relationships".into(), Json::Array(rels));
    }
    if !e.always.is_empty() {
        m.insert("always".into(), handlers(&e.always));
    }
    Json::Object(m)
}

fn properties(props: &FastIndexMap<String, Property>) -> Json {
    Json::Object(
        props
            .iter()
            .map(|(name, p)| {
                let mut pm = Map::new();
                pm.insert("type".into(), Json::String(p.type_name.clone()));
                insert_some(&mut pm, "default", p.default.clone());
                insert_some(&mut pm, "sensitive", text(&p.sensitive));
                insert_some(&mut pm, "treatment", text(&p.treatment));
                insert_some(&mut pm, "allowed", p.allowed.clone());
                insert_some(&mut pm, "min", p.min.clone());
                insert_some(&mut pm, "max", p.max.clone());
                insert_some(&mut pm, "compute", expr_text(&p.compute));
                (name.clone(), Json::Object(pm))
            })
            .collect(),
    )
}

fn handlers(hs: &FastIndexMap<String, Handler>) -> Json {
    Json::Object(
        hs.iter()
            .map(|(ev, h)| {
                let mut hm = Map::new();
                hm.insert("effects".into(), effects(&h.effects));
                insert_some(&mut hm, "guard", expr_text(&h.guard));
                (ev.clone(), Json::Object(hm))
            })
            .collect(),
    )
}

fn hint_lists(hints: &FastIndexMap<String, Vec<String>>) -> Json {
    Json::Object(hints.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

fn effects(list: &[Effect]) -> Json {
    Json::Array(
        list.iter()
            .map(|e| match e {
                Effect::Create => Json::String("create".into()),
                Effect::Transition { to } => json!({"transition": {"to": to}}),
                Effect::Set {
                    property,
                    from,
                    value,
                    compute,
                    condition,
                } => {
                    let mut b = Map::new();
                    b.insert("property".into(), Json::String(property.clone()));
                    insert_some(&mut b, "from", text(from));
                    insert_some(&mut b, "value", value.clone());
                    insert_some(&mut b, "compute", expr_text(compute));
                    insert_some(&mut b, "condition", expr_text(condition));
                    json!({"set": b})
                }
                Effect::Increment { property, by } => {
                    json!({"increment": {"property": property, "by": by}})
                }
                Effect::Relate {
                    relationship,
                    target,
                    hints,
                    condition,
                } => {
                    let mut b = Map::new();
                    b.insert("type".into(), Json::String(relationship.clone()));
                    b.insert("target".into(), Json::String(target.clone()));
                    if !hints.is_empty() {
                        b.insert("hints".into(), hint_lists(hints));
                    }
                    insert_some(&mut b, "condition", expr_text(condition));
                    json!({"relate": b})
                }
            })
            .collect(),
    )
}

fn source(s: &Source) -> Json {
    let mut m = Map::new();
    m.insert(
        "event_type".into(),
        Json::String(s.event_type_field.clone()),
    );
    m.insert("timestamp".into(), Json::String(s.timestamp_field.clone()));
    insert_some(
        &mut m,
        "event_id",
        s.event_id.as_ref().map(|ids| json!(ids)),
    );
    let events: Map<String, Json> = s
        .events
        .iter()
        .map(|(name, ev)| {
            let mut em = Map::new();
            insert_some(&mut em, "raw_type", text(&ev.raw_type));
            insert_some(&mut em, "mappings", ev.raw_mappings.clone());
            insert_some(&mut em, "hints", ev.raw_hints.clone());
            (name.clone(), Json::Object(em))
        })
        .collect();
    m.insert("events".into(), Json::Object(events));
    Json::Object(m)
}

fn schema(s: &Schema) -> Json {
    let fields: Map<String, Json> = s
        .fields
        .iter()
        .map(|(name, f)| {
            let mut fm = Map::new();
            fm.insert("type".into(), Json::String(f.type_name.clone()));
            if f.required {
                fm.insert("required".into(), Json::Bool(true));
            }
            insert_some(&mut fm, "allowed", f.allowed.clone());
            insert_some(&mut fm, "min", f.min.clone());
            insert_some(&mut fm, "max", f.max.clone());
            insert_some(&mut fm, "min_length", f.min_length.clone());
            insert_some(&mut fm, "regex", f.regex.clone());
            (name.clone(), Json::Object(fm))
        })
        .collect();
    json!({ "fields": fields })
}
