//! An entity's timeline (RESULTS.md §9): one entry per history row, with the event that
//! produced it and the changes it made, in words. Pure: the caller reads the rows and events.

use serde::Serialize;

use crate::canonical::float_json_text;
use crate::definitions::model::{Entity, PropertyType};
use crate::history::HistoryRow;
use crate::value::{timestamp_text, Instant, Value};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeline {
    pub entity_id: String,
    /// `""` when no entity type knows the id.
    pub entity_type: String,
    pub entries: Vec<TimelineEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineEntry {
    /// The row's `valid_from`, as canonical timestamp text.
    pub timestamp: String,
    /// Of the entity's event at exactly `valid_from` (`""` for a row a time rule produced).
    pub event_type: String,
    pub event_id: String,
    pub effects: Vec<String>,
    pub state_before: Option<String>,
    pub state_after: String,
}

/// One of the entity's ledger events.
#[derive(Debug, Clone)]
pub struct TimelineEvent {
    pub timestamp: Instant,
    pub sequence: i64,
    pub event_type: String,
    pub event_id: String,
}

/// The timeline of `entity_id`: `found` is its type's definition and its history rows (any
/// order), `None` when no entity type knows the id.
pub fn timeline(
    entity_id: &str,
    found: Option<(&Entity, &[HistoryRow])>,
    events: &[TimelineEvent],
) -> Timeline {
    let Some((entity, rows)) = found else {
        return Timeline {
            entity_id: entity_id.to_string(),
            entity_type: String::new(),
            entries: Vec::new(),
        };
    };
    let mut rows: Vec<&HistoryRow> = rows.iter().collect();
    rows.sort_by_key(|r| r.valid_from);
    let mut events: Vec<&TimelineEvent> = events.iter().collect();
    events.sort_by_key(|e| (e.timestamp, e.sequence));
    let properties: Vec<(&String, Option<PropertyType>)> =
        entity.properties.iter().map(|(n, p)| (n, p.kind)).collect();
    let mut entries = Vec::with_capacity(rows.len());
    let mut previous: Option<&HistoryRow> = None;
    for row in rows {
        // The last event in canonical order at exactly this instant.
        let event = events.iter().rev().find(|e| e.timestamp == row.valid_from);
        let mut effects = Vec::new();
        match previous {
            None => effects.push("Entity created".to_string()),
            Some(p) if p.state != row.state => {
                effects.push(format!("State: {} → {}", p.state, row.state));
            }
            Some(_) => {}
        }
        for (i, (name, kind)) in properties.iter().enumerate() {
            let new = row.properties.get(i).unwrap_or(&Value::Null);
            let old = previous
                .and_then(|p| p.properties.get(i))
                .unwrap_or(&Value::Null);
            if new.is_null() || new.identical(old) {
                continue;
            }
            effects.push(if old.is_null() {
                format!("{name}: {}", render(new, *kind))
            } else {
                format!("{name}: {} → {}", render(old, *kind), render(new, *kind))
            });
        }
        entries.push(TimelineEntry {
            timestamp: timestamp_text(&row.valid_from),
            event_type: event.map_or_else(String::new, |e| e.event_type.clone()),
            event_id: event.map_or_else(String::new, |e| e.event_id.clone()),
            effects,
            state_before: previous.map(|p| p.state.clone()),
            state_after: row.state.clone(),
        });
        previous = Some(row);
    }
    Timeline {
        entity_id: entity_id.to_string(),
        entity_type: entity.name.clone(),
        entries,
    }
}

/// A value as an effect shows it: a `number` property's value (stored in a float column) and
/// any float always with a fraction or an exponent (`0.0`, `49.0`, `1e+16`), everything else
/// as its text.
fn render(value: &Value, kind: Option<PropertyType>) -> String {
    match (value, kind) {
        (Value::Float(f), _) => float_json_text(*f),
        (Value::Int(i), Some(PropertyType::Number)) => float_json_text(*i as f64),
        (other, _) => other.to_text(),
    }
}
