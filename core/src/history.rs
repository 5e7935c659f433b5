//! SCD Type 2 history (PIPELINE.md §8, §9, §13): snapshots become rows with `valid_from` /
//! `valid_to`; tombstones close them. One entity's rows always form a gap-free chain with at
//! most one open row.

use std::collections::BTreeMap;

use crate::interpret::Snapshot;
use crate::value::{Instant, Value};

/// One row of `<entity>_history`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub entity_id: String,
    pub state: String,
    pub properties: Vec<Value>,
    pub valid_from: Instant,
    pub valid_to: Option<Instant>,
    pub merged_into: Option<String>,
    pub last_event_time: Option<Instant>,
    pub state_entered_time: Option<Instant>,
    pub created_time: Option<Instant>,
}

/// One row of `rel_<type>_history` (relationship properties are never populated, §9).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RelationshipRow {
    pub relationship_type: String,
    pub source_id: String,
    pub target_id: String,
    pub valid_from: Instant,
    pub valid_to: Option<Instant>,
}

/// The rows of one entity, ordered by `valid_from`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntityHistory {
    pub rows: Vec<HistoryRow>,
}

impl EntityHistory {
    /// Writes a snapshot (§8.2): a row at the same instant is replaced (keeping its
    /// `valid_to`); otherwise the row is inserted and its neighbours' bounds adjusted.
    /// Returns true when a row was written or replaced.
    pub fn apply(&mut self, entity_id: &str, s: &Snapshot) -> bool {
        self.apply_owned(entity_id, s.clone())
    }

    /// `apply` of a snapshot that is not needed afterwards: its state and properties become
    /// the row's without being copied.
    pub fn apply_owned(&mut self, entity_id: &str, s: Snapshot) -> bool {
        let row = HistoryRow {
            entity_id: entity_id.to_string(),
            state: s.state,
            properties: s.properties,
            valid_from: s.valid_from,
            valid_to: None,
            merged_into: None,
            last_event_time: s.last_event_time,
            state_entered_time: s.state_entered_time,
            created_time: s.created_time,
        };
        // A replay writes in time order: the row goes after the last one, which it closes.
        if self
            .rows
            .last()
            .is_none_or(|r| r.valid_from < row.valid_from)
        {
            if let Some(previous) = self.rows.last_mut() {
                previous.valid_to = Some(row.valid_from);
            }
            self.rows.push(row);
            return true;
        }
        match self
            .rows
            .binary_search_by(|r| r.valid_from.cmp(&row.valid_from))
        {
            Ok(i) => {
                let kept = (self.rows[i].valid_to, self.rows[i].merged_into.take());
                self.rows[i] = HistoryRow {
                    valid_to: kept.0,
                    merged_into: kept.1,
                    ..row
                };
            }
            Err(i) => {
                let next = self.rows.get(i).map(|r| r.valid_from);
                if i > 0 {
                    self.rows[i - 1].valid_to = Some(row.valid_from);
                }
                self.rows.insert(
                    i,
                    HistoryRow {
                        valid_to: next,
                        ..row
                    },
                );
            }
        }
        true
    }

    /// A tombstone (§13): closes the open row at `max(ts, its valid_from)` with
    /// `merged_into`; does nothing without an open row.
    pub fn tombstone(&mut self, ts: Instant, merged_into: Option<&str>) -> bool {
        match self.rows.last_mut() {
            Some(open) if open.valid_to.is_none() => {
                open.valid_to = Some(ts.max(open.valid_from));
                open.merged_into = merged_into.map(str::to_string);
                true
            }
            _ => false,
        }
    }

    pub fn current(&self) -> Option<&HistoryRow> {
        self.rows.last().filter(|r| r.valid_to.is_none())
    }

    /// The row valid at `t` (§8.5): `valid_from ≤ t < valid_to`.
    pub fn as_of(&self, t: Instant) -> Option<&HistoryRow> {
        self.rows
            .iter()
            .rev()
            .find(|r| r.valid_from <= t)
            .filter(|r| r.valid_to.is_none_or(|to| to > t))
    }
}

/// The relationship rows whose source is one entity, per (type, target).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RelationshipHistory {
    pub rows: BTreeMap<(String, String), Vec<RelationshipRow>>,
}

impl RelationshipHistory {
    /// Writes one record at `v` (§9): nothing when the pair already has an open row (the
    /// properties are always null, so they are identical); otherwise a new open row.
    pub fn apply(
        &mut self,
        source_id: &str,
        relationship_type: &str,
        target_id: &str,
        v: Instant,
    ) -> bool {
        let rows = self
            .rows
            .entry((relationship_type.to_string(), target_id.to_string()))
            .or_default();
        if rows.last().is_some_and(|r| r.valid_to.is_none()) {
            return false;
        }
        rows.push(RelationshipRow {
            relationship_type: relationship_type.to_string(),
            source_id: source_id.to_string(),
            target_id: target_id.to_string(),
            valid_from: v,
            valid_to: None,
        });
        true
    }

    pub fn all(&self) -> impl Iterator<Item = &RelationshipRow> {
        self.rows.values().flatten()
    }
}
