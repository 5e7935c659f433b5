//! The definition model (DEFINITIONS.md §2–§5): entities, sources and event schemas as the
//! engine uses them, with expressions already parsed and durations already read.

use std::fmt;
use std::time::Duration;

use serde_json::Value as Json;

use crate::expr::Expr;
use crate::fasthash::FastIndexMap;

/// A whole definition set: the three parts of DEFINITIONS.md §1.
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    pub entities: FastIndexMap<String, Entity>,
    pub sources: FastIndexMap<String, Source>,
    pub schemas: FastIndexMap<String, Schema>,
}

/// Where a definition was written: the file of the directory form (relative to the project,
/// e.g. `entities/customer.yaml`), or nothing for the document form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub file: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Entity {
    pub name: String,
    pub origin: Origin,
    pub starts: String,
    /// Declaration order is priority order (PIPELINE.md §5.3).
    pub identity: FastIndexMap<String, IdentityField>,
    pub properties: FastIndexMap<String, Property>,
    pub states: FastIndexMap<String, State>,
    pub relationships: Vec<Relationship>,
    pub always: FastIndexMap<String, Handler>,
}

#[derive(Debug, Clone)]
pub struct IdentityField {
    pub match_mode: String,
    pub normalize: Option<Expr>,
}

/// The five declared property types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PropertyType {
    String,
    Number,
    Integer,
    Boolean,
    DateTime,
}

impl PropertyType {
    pub fn parse(name: &str) -> Option<PropertyType> {
        Some(match name {
            "string" => PropertyType::String,
            "number" => PropertyType::Number,
            "integer" => PropertyType::Integer,
            "boolean" => PropertyType::Boolean,
            "datetime" => PropertyType::DateTime,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            PropertyType::String => "string",
            PropertyType::Number => "number",
            PropertyType::Integer => "integer",
            PropertyType::Boolean => "boolean",
            PropertyType::DateTime => "datetime",
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, PropertyType::Number | PropertyType::Integer)
    }
}

impl fmt::Display for PropertyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone)]
pub struct Property {
    /// The type as written; `kind` is `None` when it names no known type (a validation error).
    pub type_name: String,
    pub kind: Option<PropertyType>,
    pub default: Option<Json>,
    pub allowed: Option<Json>,
    pub min: Option<Json>,
    pub max: Option<Json>,
    pub sensitive: Option<String>,
    pub treatment: Option<String>,
    pub compute: Option<Expr>,
}

#[derive(Debug, Clone, Default)]
pub struct State {
    pub when: FastIndexMap<String, Handler>,
    pub after: Vec<TimeRule>,
}

#[derive(Debug, Clone)]
pub struct Handler {
    pub guard: Option<Expr>,
    pub effects: Vec<Effect>,
}

impl Handler {
    pub fn creates(&self) -> bool {
        self.effects.iter().any(|e| matches!(e, Effect::Create))
    }
}

#[derive(Debug, Clone)]
pub enum Effect {
    Create,
    Transition {
        to: String,
    },
    Set {
        property: String,
        from: Option<String>,
        value: Option<Json>,
        compute: Option<Expr>,
        condition: Option<Expr>,
    },
    Increment {
        property: String,
        by: Json,
    },
    Relate {
        relationship: String,
        target: String,
        hints: FastIndexMap<String, Vec<String>>,
        condition: Option<Expr>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeRuleKind {
    Inactivity,
    Expiration,
    StateDuration,
}

impl TimeRuleKind {
    pub fn parse(name: &str) -> Option<TimeRuleKind> {
        Some(match name {
            "inactivity" => TimeRuleKind::Inactivity,
            "expiration" => TimeRuleKind::Expiration,
            "state_duration" => TimeRuleKind::StateDuration,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            TimeRuleKind::Inactivity => "inactivity",
            TimeRuleKind::Expiration => "expiration",
            TimeRuleKind::StateDuration => "state_duration",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TimeRule {
    pub kind: TimeRuleKind,
    /// The threshold as written (hashed and stored as text).
    pub threshold_text: String,
    pub threshold: Duration,
    pub effects: Vec<Effect>,
}

#[derive(Debug, Clone)]
pub struct Relationship {
    pub relationship: String,
    pub target: String,
    pub cardinality: String,
    pub properties: FastIndexMap<String, Property>,
}

#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub origin: Origin,
    pub event_type_field: String,
    pub timestamp_field: String,
    pub event_id: Option<Vec<String>>,
    pub events: FastIndexMap<String, SourceEvent>,
}

impl Source {
    /// The event definition selected by a raw type value (PIPELINE.md §2.1).
    pub fn event_for_raw_type(&self, raw_type: &str) -> Option<&SourceEvent> {
        self.events
            .values()
            .find(|e| e.effective_raw_type() == raw_type)
    }
}

#[derive(Debug, Clone)]
pub struct SourceEvent {
    pub name: String,
    pub raw_type: Option<String>,
    pub mappings: FastIndexMap<String, Mapping>,
    /// Entity type → hinted fields (non-list values are dropped, DEFINITIONS.md §3).
    pub hints: FastIndexMap<String, Vec<String>>,
    /// The `mappings` and `hints` mappings exactly as written (the normalized document copies
    /// them verbatim, §6).
    pub raw_mappings: Option<Json>,
    pub raw_hints: Option<Json>,
}

impl SourceEvent {
    pub fn effective_raw_type(&self) -> &str {
        self.raw_type.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, Clone)]
pub struct Mapping {
    pub from: Option<String>,
    pub compute: Option<Expr>,
    /// Both `from` and `compute` keys were written (a validation error, §7.2 item 13).
    pub has_both: bool,
    pub target_type: Option<String>,
    pub default: Option<Json>,
}

#[derive(Debug, Clone)]
pub struct Schema {
    pub name: String,
    pub origin: Origin,
    pub fields: FastIndexMap<String, SchemaField>,
}

#[derive(Debug, Clone)]
pub struct SchemaField {
    pub type_name: String,
    pub required: bool,
    pub allowed: Option<Json>,
    pub min: Option<Json>,
    pub max: Option<Json>,
    pub min_length: Option<Json>,
    pub regex: Option<Json>,
}
