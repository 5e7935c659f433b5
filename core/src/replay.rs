//! Replaying entities (PIPELINE.md §10.4, §10.5): each entity's events in canonical order
//! through its state machine, then its time rules up to `as_of` — or, for a merge loser, up to
//! the merge, closed by its tombstone. Entities are independent, so a whole ledger replays
//! in parallel across entities and sequentially within one; the result does not depend on
//! the number of workers.

use rayon::prelude::*;

use crate::definitions::Definitions;
use crate::fasthash::FastIndexMap;
use crate::history::{EntityHistory, RelationshipHistory};
use crate::interpret::{EventView, Machine, RelateLookup, Slot, Snapshot};
use crate::results::EventFailure;
use crate::value::{Instant, Value};

/// The event type of explicit-merge system events, which are never interpreted (§11.3).
pub const MERGE_EVENT_TYPE: &str = "_defacto_merge";

/// A replayable ledger row.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEvent {
    pub sequence: i64,
    pub event_id: String,
    pub event_type: String,
    pub timestamp: Instant,
    pub source: String,
    pub data: FastIndexMap<String, Value>,
}

impl LedgerEvent {
    /// Canonical order (§4): timestamp instant, then ledger sequence.
    pub fn order_key(&self) -> (Instant, i64) {
        (self.timestamp, self.sequence)
    }

    pub fn view(&self) -> EventView<'_> {
        EventView {
            event_id: &self.event_id,
            event_type: &self.event_type,
            timestamp: self.timestamp,
            data: &self.data,
        }
    }
}

/// What to replay for one entity.
#[derive(Debug, Clone)]
pub struct EntityJob<'a> {
    pub entity_type: String,
    pub entity_id: String,
    /// The events of the entity (§5.4), in canonical order.
    pub events: Vec<&'a LedgerEvent>,
    /// For a merge loser: the winner and the merge instant.
    pub merged_into: Option<(String, Instant)>,
}

/// The outcome of replaying one entity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntityReplay {
    pub entity_type: String,
    pub entity_id: String,
    pub history: EntityHistory,
    pub relationships: RelationshipHistory,
    /// The working state at the end (empty for a merged-away entity).
    pub slot: Slot,
    /// Interpretation failures, each with the (timestamp, sequence) of its event.
    pub failures: Vec<((Instant, i64), EventFailure)>,
    /// Snapshots written: event snapshots and time-rule firings.
    pub snapshots: usize,
    pub rule_firings: usize,
    pub rule_transitions: usize,
}

/// Replays the events of one entity from an empty working state.
pub fn replay_entity(
    defs: &Definitions,
    job: &EntityJob<'_>,
    as_of: Instant,
    relate: &(dyn RelateLookup + Sync),
) -> EntityReplay {
    let mut out = EntityReplay {
        entity_type: job.entity_type.clone(),
        entity_id: job.entity_id.clone(),
        ..Default::default()
    };
    let Some(def) = defs.entities.get(&job.entity_type) else {
        return out;
    };
    let machine = Machine::new(def, as_of);
    let mut snapshots: Vec<Snapshot> = Vec::new();
    // Most events write a row, and a time rule often one more after the last: room for them
    // at once rather than a row vector copied as it doubles (a history row is some 180
    // bytes; growing was a tenth of a FULL replay).
    out.history.rows.reserve(job.events.len() + 1);
    // What interpreting an event reads besides the event row, asked of memory for all of the
    // entity's events at once, so those cache misses overlap instead of one after the other.
    for event in &job.events {
        prefetch(event.event_type.as_ptr());
        if let Some((key, _)) = event.data.get_index(0) {
            prefetch((key as *const String).cast());
        }
    }
    for event in &job.events {
        if event.event_type == MERGE_EVENT_TYPE {
            continue;
        }
        if let Err(error) =
            machine.apply_event(&mut out.slot, &event.view(), relate, &mut snapshots)
        {
            out.failures.push((
                event.order_key(),
                EventFailure::interpretation(
                    &job.entity_type,
                    &job.entity_id,
                    Some(&event.event_id),
                    error,
                ),
            ));
        }
        write(defs, &mut out, &mut snapshots);
    }
    let until = job.merged_into.as_ref().map_or(as_of, |(_, ts)| *ts);
    if let Err(error) = machine.evaluate_rules(&mut out.slot, until, &mut snapshots) {
        out.failures.push((
            (until, i64::MAX),
            EventFailure::interpretation(&job.entity_type, &job.entity_id, None, error),
        ));
    }
    write(defs, &mut out, &mut snapshots);
    if let Some((winner, ts)) = &job.merged_into {
        out.history.tombstone(*ts, Some(winner));
        out.slot = Slot::default();
    }
    out
}

/// Asks for the cache line at `at` without waiting for it (nothing on other targets).
#[inline(always)]
pub(crate) fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(at.cast(), std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Moves snapshots into the entity's history and relationship rows (§8.2, §9).
fn write(defs: &Definitions, out: &mut EntityReplay, snapshots: &mut Vec<Snapshot>) {
    for s in snapshots.drain(..) {
        if s.from_rule {
            out.rule_firings += 1;
            out.rule_transitions += s.transitioned as usize;
        }
        out.snapshots += 1;
        for r in &s.relationships {
            if declared_relationship(defs, &r.relationship_type) {
                out.relationships.apply(
                    &out.entity_id,
                    &r.relationship_type,
                    &r.target_entity_id,
                    s.valid_from,
                );
            }
        }
        out.history.apply_owned(&out.entity_id, s);
    }
}

/// Relationship rows are written only for types some entity declares (§9).
pub fn declared_relationship(defs: &Definitions, relationship_type: &str) -> bool {
    defs.entities.values().any(|e| {
        e.relationships
            .iter()
            .any(|r| r.relationship == relationship_type)
    })
}

/// Replays `count` entities on a pool of `workers` threads, entity `i` from the job `job(i)`
/// makes (on the pool too: gathering an entity's events is part of the work). The replays
/// come back in the order of `i`, whatever the scheduling.
pub fn replay_entities<'e>(
    defs: &Definitions,
    count: usize,
    job: impl Fn(usize) -> EntityJob<'e> + Sync,
    as_of: Instant,
    relate: &(dyn RelateLookup + Sync),
    workers: usize,
) -> Vec<EntityReplay> {
    let one = |i: usize| replay_entity(defs, &job(i), as_of, relate);
    if workers <= 1 {
        return (0..count).map(one).collect();
    }
    let run = || (0..count).into_par_iter().map(one).collect();
    match rayon::ThreadPoolBuilder::new().num_threads(workers).build() {
        Ok(pool) => pool.install(run),
        Err(_) => run(),
    }
}
