//! Drafts (DEFINITIONS.md §8.6): a mutable copy of a version's document, edited one
//! operation at a time. Each operation is validated at once and rolled back when it fails;
//! `diff` compares with the base at the entity level and `impact` predicts the build mode.

use serde_json::{json, Map, Value as Json};

use super::mode::{predict, BuildMode};
use super::{DefinitionError, Definitions, NormalizedDocument};

/// One edit of a draft.
#[derive(Debug, Clone, PartialEq)]
pub enum DraftOp {
    AddProperty {
        entity: String,
        name: String,
        spec: Json,
    },
    RemoveProperty {
        entity: String,
        name: String,
    },
    AddState {
        entity: String,
        name: String,
        on: Option<Json>,
        after: Option<Json>,
    },
    RemoveState {
        entity: String,
        name: String,
    },
    AddTransition {
        entity: String,
        state: String,
        event: String,
        to: String,
    },
    AddHandler {
        entity: String,
        state: String,
        event: String,
        effects: Json,
        guard: Option<String>,
    },
    UpdateIdentity {
        entity: String,
        fields: Map<String, Json>,
    },
}

/// A draft: the base document and the edited one.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub base: Json,
    pub document: Json,
}

fn err(message: impl Into<String>) -> DefinitionError {
    let message = message.into();
    DefinitionError {
        errors: vec![message.clone()],
        message,
    }
}

impl Draft {
    pub fn new(base: Json) -> Draft {
        Draft {
            document: base.clone(),
            base,
        }
    }

    fn entity_mut<'a>(
        doc: &'a mut Json,
        entity: &str,
    ) -> Result<&'a mut Map<String, Json>, DefinitionError> {
        doc.get_mut("entities")
            .and_then(|e| e.get_mut(entity))
            .and_then(Json::as_object_mut)
            .ok_or_else(|| err(format!("Entity type '{entity}' not found")))
    }

    fn section<'a>(body: &'a mut Map<String, Json>, key: &str) -> &'a mut Map<String, Json> {
        if !body.get(key).is_some_and(Json::is_object) {
            body.insert(key.to_string(), Json::Object(Map::new()));
        }
        body.get_mut(key)
            .and_then(Json::as_object_mut)
            .expect("inserted above")
    }

    fn state_mut<'a>(
        body: &'a mut Map<String, Json>,
        entity: &str,
        state: &str,
    ) -> Result<&'a mut Map<String, Json>, DefinitionError> {
        let states = Self::section(body, "states");
        match states.get_mut(state) {
            Some(s) => {
                if !s.is_object() {
                    *s = Json::Object(Map::new());
                }
                Ok(s.as_object_mut().expect("an object"))
            }
            None => Err(err(format!("State '{state}' not found on '{entity}'"))),
        }
    }

    /// Applies one operation; on any failure the draft is unchanged.
    pub fn apply(&mut self, op: &DraftOp) -> Result<(), DefinitionError> {
        let mut doc = self.document.clone();
        Self::edit(&mut doc, op)?;
        compile(&doc).map_err(|e| err(format!("Draft validation failed: {}", e.message)))?;
        self.document = doc;
        Ok(())
    }

    fn edit(doc: &mut Json, op: &DraftOp) -> Result<(), DefinitionError> {
        match op {
            DraftOp::AddProperty { entity, name, spec } => {
                let body = Self::entity_mut(doc, entity)?;
                let props = Self::section(body, "properties");
                if props.contains_key(name) {
                    return Err(err(format!(
                        "Property '{name}' already exists on '{entity}'"
                    )));
                }
                props.insert(name.clone(), spec.clone());
            }
            DraftOp::RemoveProperty { entity, name } => {
                let body = Self::entity_mut(doc, entity)?;
                if Self::section(body, "properties")
                    .shift_remove(name)
                    .is_none()
                {
                    return Err(err(format!("Property '{name}' not found on '{entity}'")));
                }
            }
            DraftOp::AddState {
                entity,
                name,
                on,
                after,
            } => {
                let body = Self::entity_mut(doc, entity)?;
                let states = Self::section(body, "states");
                if states.contains_key(name) {
                    return Err(err(format!("State '{name}' already exists on '{entity}'")));
                }
                let mut state = Map::new();
                if let Some(on) = on {
                    state.insert("when".into(), on.clone());
                }
                if let Some(after) = after {
                    state.insert("after".into(), after.clone());
                }
                states.insert(name.clone(), Json::Object(state));
            }
            DraftOp::RemoveState { entity, name } => {
                let body = Self::entity_mut(doc, entity)?;
                if Self::section(body, "states").shift_remove(name).is_none() {
                    return Err(err(format!("State '{name}' not found on '{entity}'")));
                }
            }
            DraftOp::AddTransition {
                entity,
                state,
                event,
                to,
            } => {
                let handler = json!({"effects": [{"transition": {"to": to}}]});
                Self::add_handler(doc, entity, state, event, handler)?;
            }
            DraftOp::AddHandler {
                entity,
                state,
                event,
                effects,
                guard,
            } => {
                let mut handler = Map::new();
                handler.insert("effects".into(), effects.clone());
                if let Some(g) = guard {
                    handler.insert("guard".into(), Json::String(g.clone()));
                }
                Self::add_handler(doc, entity, state, event, Json::Object(handler))?;
            }
            DraftOp::UpdateIdentity { entity, fields } => {
                let body = Self::entity_mut(doc, entity)?;
                body.insert("identity".into(), Json::Object(fields.clone()));
                body.insert(
                    "identity_order".into(),
                    Json::Array(fields.keys().map(|k| Json::String(k.clone())).collect()),
                );
            }
        }
        Ok(())
    }

    fn add_handler(
        doc: &mut Json,
        entity: &str,
        state: &str,
        event: &str,
        handler: Json,
    ) -> Result<(), DefinitionError> {
        let body = Self::entity_mut(doc, entity)?;
        let state_body = Self::state_mut(body, entity, state)?;
        let when = Self::section(state_body, "when");
        if when.contains_key(event) {
            return Err(err(format!(
                "Handler for '{event}' already exists on state '{state}'"
            )));
        }
        when.insert(event.to_string(), handler);
        Ok(())
    }

    /// The draft's definitions, validated by every layer.
    pub fn definitions(&self) -> Result<Definitions, DefinitionError> {
        Definitions::from_document(&self.document)
    }

    /// `diff()` of §8.6: entity-level changes against the base.
    pub fn diff(&self) -> Json {
        diff(&self.base, &self.document)
    }

    /// `impact()` of §8.6 against the active version's hashes.
    pub fn impact(
        &self,
        active: Option<&super::Hashes>,
    ) -> Result<(BuildMode, &'static str), DefinitionError> {
        let defs = compile(&self.document)?;
        Ok(predict(active, &NormalizedDocument::of(&defs).hashes()))
    }
}

/// Compiles a document (structural and compilation layers), as drafts validate each edit.
fn compile(doc: &Json) -> Result<Definitions, DefinitionError> {
    let raw = super::raw_from_document(doc).map_err(|d| err(d.to_string()))?;
    match super::parse::read(&raw) {
        Err(structural) => Err(err(structural.to_string())),
        Ok((_, errors)) if !errors.is_empty() => Err(err(errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "))),
        Ok((defs, _)) => Ok(defs),
    }
}

/// The entity-level difference of two documents (§8.6).
pub fn diff(base: &Json, new: &Json) -> Json {
    let empty = Map::new();
    let entities = |d: &Json| {
        d.get("entities")
            .and_then(Json::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let (old, new) = (entities(base), entities(new));
    let mut added = Map::new();
    let mut removed = Map::new();
    let mut modified = Map::new();
    for (name, body) in &new {
        match old.get(name) {
            None => {
                added.insert(name.clone(), body.clone());
            }
            Some(before) if before != body => {
                let keys = |b: &Json, section: &str| -> Vec<String> {
                    b.get(section)
                        .and_then(Json::as_object)
                        .unwrap_or(&empty)
                        .keys()
                        .cloned()
                        .collect()
                };
                let mut m = Map::new();
                let delta = |a: &[String], b: &[String]| -> Vec<Json> {
                    a.iter()
                        .filter(|k| !b.contains(k))
                        .map(|k| Json::String(k.clone()))
                        .collect()
                };
                for (section, label) in [("properties", "properties"), ("states", "states")] {
                    let (was, now) = (keys(before, section), keys(body, section));
                    let plus = delta(&now, &was);
                    let minus = delta(&was, &now);
                    if !plus.is_empty() {
                        m.insert(format!("added_{label}"), Json::Array(plus));
                    }
                    if !minus.is_empty() {
                        m.insert(format!("removed_{label}"), Json::Array(minus));
                    }
                }
                let identity =
                    |b: &Json| (b.get("identity").cloned(), b.get("identity_order").cloned());
                if identity(before) != identity(body) {
                    m.insert("identity_changed".into(), Json::Bool(true));
                }
                modified.insert(name.clone(), Json::Object(m));
            }
            Some(_) => {}
        }
    }
    for (name, body) in &old {
        if !new.contains_key(name) {
            removed.insert(name.clone(), body.clone());
        }
    }
    json!({"added": added, "removed": removed, "modified": modified})
}
