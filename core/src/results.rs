//! Result types of the jobs (RESULTS.md). Field names are normative: jobs print these as JSON
//! and orchestrators read them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// The stage at which an event (or entity) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Normalization,
    Interpretation,
    Publishing,
    Consumption,
}

/// One failed event, entity or delivery (RESULTS.md §1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFailure {
    pub raw: Json,
    pub error: String,
    pub stage: Stage,
    pub source: String,
    pub handler: Option<String>,
    pub field: Option<String>,
    pub entity_id: Option<String>,
    pub entity_type: Option<String>,
    pub event_id: Option<String>,
    pub recoverable: bool,
}

impl EventFailure {
    /// A normalization failure of a raw event of `source`.
    pub fn normalization(
        raw: &Json,
        source: &str,
        handler: Option<&str>,
        field: Option<&str>,
        error: impl Into<String>,
    ) -> EventFailure {
        EventFailure {
            raw: raw.clone(),
            error: error.into(),
            stage: Stage::Normalization,
            source: source.to_string(),
            handler: handler.map(str::to_string),
            field: field.map(str::to_string),
            entity_id: None,
            entity_type: None,
            event_id: None,
            recoverable: false,
        }
    }

    /// An interpretation failure of one event for one entity.
    pub fn interpretation(
        entity_type: &str,
        entity_id: &str,
        event_id: Option<&str>,
        error: impl Into<String>,
    ) -> EventFailure {
        EventFailure {
            raw: Json::Object(Default::default()),
            error: error.into(),
            stage: Stage::Interpretation,
            source: String::new(),
            handler: None,
            field: None,
            entity_id: Some(entity_id.to_string()),
            entity_type: Some(entity_type.to_string()),
            event_id: event_id.map(str::to_string),
            recoverable: false,
        }
    }
}

/// What a `normalize` run did with the raw rows it processed (RESULTS.md §2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestResult {
    pub events_ingested: u64,
    pub events_failed: u64,
    pub duplicates_skipped: u64,
    pub duplicate_ids: Vec<String>,
    pub failures: Vec<EventFailure>,
    /// Always null in the batch product (the `build` job reports its own result).
    pub build_result: Option<Json>,
    pub timing: BTreeMap<String, f64>,
}

/// What a resolve pass did (RESULTS.md §3.1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResolveResult {
    pub events_resolved: u64,
    pub merges_detected: u64,
    pub renormalized: bool,
    pub identity_reset: bool,
    pub events_failed: u64,
    pub failures: Vec<EventFailure>,
    pub duration_ms: u64,
}
