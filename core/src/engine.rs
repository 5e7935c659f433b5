//! The in-memory engine: the whole pipeline of PIPELINE.md over a ledger held in memory —
//! ingest (normalize + deduplicate), the resolve step, FULL and INCREMENTAL builds with
//! late-arrival rebuilds and merge rebuilds, and ticks. It is the reference every storage
//! job must agree with row for row, and the jobs reuse its pieces (normalizer, resolver,
//! machine, replay) on batches streamed from the lake.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Instant as Clock;

use serde::{Deserialize, Serialize};

use crate::definitions::mode::BuildMode;
use crate::definitions::Definitions;
use crate::history::{EntityHistory, RelationshipHistory};
use crate::identity::{
    shard_of, IdentityFields, IdentityStore, Key, MemoryIdentity, Merge, Resolver,
};
use crate::interpret::{Machine, RelateLookup, Slot, Snapshot};
use crate::normalize::{dedup_call, normalize_hint, Hints, Normalizer};
use crate::replay::{declared_relationship, replay_entities, EntityJob, EntityReplay, LedgerEvent};
use crate::results::{EventFailure, IngestResult};
use crate::value::Instant;

/// An entity: (entity type, entity id).
pub type EntityKey = (String, String);

/// `BuildResult` (RESULTS.md §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildResult {
    pub mode: BuildMode,
    pub events_processed: u64,
    pub effects_produced: u64,
    pub entities_created: u64,
    pub entities_updated: u64,
    pub merges_detected: u64,
    pub late_arrivals: u64,
    pub duration_ms: u64,
    pub events_failed: u64,
    pub failures: Vec<EventFailure>,
    pub timing: BTreeMap<String, f64>,
}

/// `TickResult` (RESULTS.md §4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickResult {
    pub effects_produced: u64,
    pub entities_affected: u64,
    pub transitions: u64,
}

/// The in-memory pipeline for one definition set.
pub struct Engine {
    defs: Definitions,
    ledger: Vec<LedgerEvent>,
    hints: BTreeMap<i64, Hints>,
    event_ids: HashSet<String>,
    next_sequence: i64,
    resolver: Resolver<MemoryIdentity>,
    resolve_cursor: i64,
    /// `event_entities`: entity → the sequences assigned to it (never re-pointed, O1).
    assignments: BTreeMap<EntityKey, BTreeSet<i64>>,
    /// Merges executed by resolution and not yet applied by a build.
    pending_merges: Vec<(String, Merge)>,
    cursor: i64,
    watermark: Option<Instant>,
    workers: usize,
    pub slots: BTreeMap<EntityKey, Slot>,
    pub history: BTreeMap<EntityKey, EntityHistory>,
    pub relationships: BTreeMap<EntityKey, RelationshipHistory>,
}

impl Engine {
    pub fn new(defs: Definitions) -> Engine {
        let fields = IdentityFields::from_definitions(&defs);
        Engine {
            defs,
            ledger: Vec::new(),
            hints: BTreeMap::new(),
            event_ids: HashSet::new(),
            next_sequence: 1,
            resolver: Resolver::new(fields, None, MemoryIdentity::new()),
            resolve_cursor: 0,
            assignments: BTreeMap::new(),
            pending_merges: Vec::new(),
            cursor: 0,
            watermark: None,
            workers: 1,
            slots: BTreeMap::new(),
            history: BTreeMap::new(),
            relationships: BTreeMap::new(),
        }
    }

    /// Interpretation runs on this many threads (results never depend on it).
    pub fn with_workers(mut self, workers: usize) -> Engine {
        self.workers = workers.max(1);
        self
    }

    pub fn definitions(&self) -> &Definitions {
        &self.defs
    }

    pub fn resolver(&self) -> &Resolver<MemoryIdentity> {
        &self.resolver
    }

    pub fn ledger(&self) -> &[LedgerEvent] {
        &self.ledger
    }

    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// One ingest call followed by normalization (PIPELINE.md §1, §2): every raw event takes
    /// the next sequence in input order; the call is deduplicated as a unit (§2.9).
    pub fn ingest(
        &mut self,
        source: &str,
        raws: &[serde_json::Value],
        as_of: Instant,
    ) -> IngestResult {
        let normalizer = Normalizer::new(&self.defs, as_of);
        let mut result = IngestResult::default();
        let mut normalized = Vec::new();
        for (i, raw) in raws.iter().enumerate() {
            let sequence = self.next_sequence + i as i64;
            match normalizer.normalize(source, raw) {
                Ok(e) => normalized.push((i, (sequence, e))),
                Err(f) => result.failures.push(f),
            }
        }
        self.next_sequence += raws.len() as i64;
        let known = &self.event_ids;
        let dedup = dedup_call(
            normalized,
            |(_, e)| (e.event_id.as_str(), e.timestamp),
            |id| known.contains(id),
        );
        result.duplicates_skipped = dedup.duplicate_ids.len() as u64;
        result.duplicate_ids = dedup.duplicate_ids;
        for (sequence, e) in dedup.accepted {
            self.event_ids.insert(e.event_id.clone());
            self.hints.insert(sequence, e.hints);
            self.ledger.push(LedgerEvent {
                sequence,
                event_id: e.event_id,
                event_type: e.event_type,
                timestamp: e.timestamp,
                source: e.source,
                data: e.data,
            });
            result.events_ingested += 1;
        }
        self.ledger.sort_by_key(|e| e.sequence);
        result.events_failed = result.failures.len() as u64;
        result
    }

    /// The resolve step (§5.5): resolves the rows above its cursor in canonical order.
    fn resolve(&mut self) -> u64 {
        let mut new: Vec<&LedgerEvent> = self
            .ledger
            .iter()
            .filter(|e| e.sequence > self.resolve_cursor)
            .collect();
        new.sort_by_key(|e| e.order_key());
        let mut merges = 0;
        for e in new {
            let hints = &self.hints[&e.sequence];
            let resolution = self.resolver.resolve(hints, e.timestamp);
            for (entity_type, id) in resolution.entities {
                self.assignments
                    .entry((entity_type, id))
                    .or_default()
                    .insert(e.sequence);
            }
            for m in resolution.merges {
                let ty = self
                    .resolver
                    .store()
                    .entity_type(&m.into)
                    .unwrap_or_default();
                self.pending_merges.push((ty, m));
                merges += 1;
            }
        }
        self.resolve_cursor = self
            .ledger
            .last()
            .map_or(self.resolve_cursor, |e| e.sequence.max(self.resolve_cursor));
        merges
    }

    /// The events of an entity (§5.4): its own rows and those of every entity merged into
    /// it, recursively, in canonical order.
    fn events_of(&self, key: &EntityKey) -> Vec<&LedgerEvent> {
        let mut seqs: BTreeSet<i64> = BTreeSet::new();
        let mut stack = vec![key.1.clone()];
        while let Some(id) = stack.pop() {
            if let Some(s) = self.assignments.get(&(key.0.clone(), id.clone())) {
                seqs.extend(s);
            }
            stack.extend(self.resolver.store().merged_from(&id));
        }
        // The ledger is kept in sequence order, so each row is a binary search away.
        let mut events: Vec<&LedgerEvent> = seqs
            .iter()
            .filter_map(|s| {
                self.ledger
                    .binary_search_by_key(s, |e| e.sequence)
                    .ok()
                    .map(|i| &self.ledger[i])
            })
            .collect();
        events.sort_by_key(|e| e.order_key());
        events
    }

    fn job(&self, key: &EntityKey) -> EntityJob<'_> {
        let merged_into = self.resolver.store().merged_into(&key.1).map(|winner| {
            let ts = self
                .resolver
                .store()
                .merge_log()
                .into_iter()
                .find(|row| row.from == key.1)
                .map(|row| row.timestamp)
                .expect("a merged entity has a merge_log row");
            (winner, ts)
        });
        EntityJob {
            entity_type: key.0.clone(),
            entity_id: key.1.clone(),
            events: self.events_of(key),
            merged_into,
        }
    }

    /// A build (§10.3, §10.5): resolve, then FULL or INCREMENTAL, then the sweep.
    pub fn build(&mut self, as_of: Instant, full: bool) -> BuildResult {
        let started = Clock::now();
        let merges_detected = self.resolve();
        let highest = self.ledger.iter().map(|e| e.sequence).max().unwrap_or(0);
        let mode = if full {
            BuildMode::Full
        } else if highest > self.cursor || !self.pending_merges.is_empty() {
            BuildMode::Incremental
        } else {
            BuildMode::Skip
        };
        let mut result = BuildResult {
            mode,
            events_processed: 0,
            effects_produced: 0,
            entities_created: 0,
            entities_updated: 0,
            merges_detected,
            late_arrivals: 0,
            duration_ms: 0,
            events_failed: 0,
            failures: Vec::new(),
            timing: BTreeMap::new(),
        };
        if mode == BuildMode::Skip {
            result.merges_detected = 0;
            return result;
        }
        let existed: BTreeSet<EntityKey> = self
            .slots
            .iter()
            .filter(|(_, s)| s.entity.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        let mut failures: Vec<((Instant, i64), EventFailure)> = Vec::new();
        let mut written: BTreeSet<EntityKey> = BTreeSet::new();
        match mode {
            BuildMode::Full => {
                self.slots.clear();
                self.history.clear();
                self.relationships.clear();
                self.pending_merges.clear();
                result.events_processed = self
                    .ledger
                    .iter()
                    .filter(|e| e.sequence <= self.resolve_cursor)
                    .count() as u64;
                let keys: Vec<EntityKey> = self.assignments.keys().cloned().collect();
                let replays = self.replay(&keys, as_of);
                for (key, r) in replays {
                    result.effects_produced += r.snapshots as u64;
                    if r.snapshots > 0 {
                        written.insert(key.clone());
                    }
                    self.install(key, r, &mut failures);
                }
            }
            _ => {
                self.incremental(as_of, &mut result, &mut failures, &mut written);
            }
        }
        // Post-build sweep (§10.9).
        let tick = self.sweep(as_of, &mut failures, &mut written);
        result.effects_produced += tick.effects_produced;
        self.cursor = self.cursor.max(self.resolve_cursor);
        let max_ts = self.ledger.iter().map(|e| e.timestamp).max();
        self.watermark = self.watermark.max(max_ts);
        for key in &written {
            let exists = self.slots.get(key).is_some_and(|s| s.entity.is_some());
            if existed.contains(key) {
                result.entities_updated += 1;
            } else if exists {
                result.entities_created += 1;
            }
        }
        if mode == BuildMode::Full {
            result.entities_updated = 0;
            result.entities_created =
                self.slots.values().filter(|s| s.entity.is_some()).count() as u64;
        }
        failures.sort_by(|a, b| {
            (a.0, &a.1.entity_type, &a.1.entity_id).cmp(&(b.0, &b.1.entity_type, &b.1.entity_id))
        });
        result.failures = failures.into_iter().map(|(_, f)| f).collect();
        result.events_failed = result.failures.len() as u64;
        result.duration_ms = started.elapsed().as_millis() as u64;
        result
    }

    /// A FULL replay of the entities one shard owns (§14): `shard_hash(id) mod total`. The
    /// union over all shards equals the replay of every entity.
    pub fn replay_shard(&mut self, as_of: Instant, shard_id: u32, total_shards: u32) -> BTreeMap<EntityKey, EntityReplay> {
        self.resolve();
        let keys: Vec<EntityKey> = self
            .assignments
            .keys()
            .filter(|k| shard_of(&k.1, total_shards) == shard_id)
            .cloned()
            .collect();
        self.replay(&keys, as_of)
    }

    fn replay(&self, keys: &[EntityKey], as_of: Instant) -> BTreeMap<EntityKey, EntityReplay> {
        let jobs: Vec<EntityJob<'_>> = keys.iter().map(|k| self.job(k)).collect();
        let lookup = Lookup {
            engine: self,
            as_of,
        };
        replay_entities(&self.defs, &jobs, as_of, &lookup, self.workers)
    }

    /// Replaces an entity's rows, relationship rows (where it is the source) and state with
    /// those of a replay.
    fn install(
        &mut self,
        key: EntityKey,
        r: EntityReplay,
        failures: &mut Vec<((Instant, i64), EventFailure)>,
    ) {
        failures.extend(r.failures);
        if r.history.rows.is_empty() {
            self.history.remove(&key);
        } else {
            self.history.insert(key.clone(), r.history);
        }
        if r.relationships.rows.is_empty() {
            self.relationships.remove(&key);
        } else {
            self.relationships.insert(key.clone(), r.relationships);
        }
        self.slots.insert(key, r.slot);
    }

    fn incremental(
        &mut self,
        as_of: Instant,
        result: &mut BuildResult,
        failures: &mut Vec<((Instant, i64), EventFailure)>,
        written: &mut BTreeSet<EntityKey>,
    ) {
        let watermark = self.watermark;
        let mut rows: Vec<LedgerEvent> = self
            .ledger
            .iter()
            .filter(|e| e.sequence > self.cursor && e.sequence <= self.resolve_cursor)
            .cloned()
            .collect();
        rows.sort_by_key(|e| e.order_key());
        result.events_processed = rows.len() as u64;
        let mut rebuild: BTreeSet<EntityKey> = BTreeSet::new();
        let by_sequence: BTreeMap<i64, Vec<EntityKey>> = {
            let mut m: BTreeMap<i64, Vec<EntityKey>> = BTreeMap::new();
            for (key, seqs) in &self.assignments {
                for s in seqs.range(self.cursor + 1..) {
                    m.entry(*s).or_default().push(key.clone());
                }
            }
            m
        };
        for event in &rows {
            let Some(keys) = by_sequence.get(&event.sequence) else {
                continue;
            };
            for key in keys {
                for target in self.chain(key) {
                    let slot = self.slots.entry(target.clone()).or_default();
                    let late = watermark.is_some_and(|w| event.timestamp < w)
                        || slot.horizon.is_some_and(|h| {
                            event.timestamp < h.at || (event.timestamp == h.at && h.by_rule)
                        });
                    if late {
                        result.late_arrivals += 1;
                        rebuild.insert(target);
                        continue;
                    }
                    if rebuild.contains(&target) {
                        continue;
                    }
                    self.apply_one(&target, event, as_of, failures, written, result);
                }
            }
        }
        // Late entities, then merges: loser and winner rebuilt from their events.
        for (ty, m) in std::mem::take(&mut self.pending_merges) {
            rebuild.insert((ty.clone(), m.from.clone()));
            rebuild.insert((ty, m.into.clone()));
        }
        if !rebuild.is_empty() {
            let keys: Vec<EntityKey> = rebuild.into_iter().collect();
            let replays = self.replay(&keys, as_of);
            for (key, r) in replays {
                // A rebuild replaces the failures its events produced in the pass.
                failures.retain(|(_, f)| {
                    !(f.entity_type.as_deref() == Some(key.0.as_str())
                        && f.entity_id.as_deref() == Some(key.1.as_str()))
                });
                result.effects_produced += r.snapshots as u64;
                written.insert(key.clone());
                self.install(key, r, failures);
            }
        }
    }

    /// The entity a row is assigned to, and each entity on its chain of merges (§10.3).
    fn chain(&self, key: &EntityKey) -> Vec<EntityKey> {
        let mut out = vec![key.clone()];
        let mut id = key.1.clone();
        while let Some(next) = self.resolver.store().merged_into(&id) {
            out.push((key.0.clone(), next.clone()));
            id = next;
        }
        out
    }

    fn apply_one(
        &mut self,
        key: &EntityKey,
        event: &LedgerEvent,
        as_of: Instant,
        failures: &mut Vec<((Instant, i64), EventFailure)>,
        written: &mut BTreeSet<EntityKey>,
        result: &mut BuildResult,
    ) {
        if event.event_type == crate::replay::MERGE_EVENT_TYPE {
            return;
        }
        let Some(def) = self.defs.entities.get(&key.0) else {
            return;
        };
        let machine = Machine::new(def, as_of);
        let mut slot = self.slots.remove(key).unwrap_or_default();
        let mut snapshots = Vec::new();
        let lookup = Lookup {
            engine: self,
            as_of,
        };
        if let Err(error) = machine.apply_event(&mut slot, &event.view(), &lookup, &mut snapshots) {
            failures.push((
                event.order_key(),
                EventFailure::interpretation(&key.0, &key.1, Some(&event.event_id), error),
            ));
        }
        result.effects_produced += snapshots.len() as u64;
        self.write(key, &snapshots, written);
        self.slots.insert(key.clone(), slot);
    }

    fn write(
        &mut self,
        key: &EntityKey,
        snapshots: &[Snapshot],
        written: &mut BTreeSet<EntityKey>,
    ) {
        for s in snapshots {
            written.insert(key.clone());
            self.history
                .entry(key.clone())
                .or_default()
                .apply(&key.1, s);
            for r in &s.relationships {
                if declared_relationship(&self.defs, &r.relationship_type) {
                    self.relationships.entry(key.clone()).or_default().apply(
                        &key.1,
                        &r.relationship_type,
                        &r.target_entity_id,
                        s.valid_from,
                    );
                }
            }
        }
    }

    /// Time rules of every live entity up to `as_of` (§7.5).
    fn sweep(
        &mut self,
        as_of: Instant,
        failures: &mut Vec<((Instant, i64), EventFailure)>,
        written: &mut BTreeSet<EntityKey>,
    ) -> TickResult {
        let mut tick = TickResult::default();
        let keys: Vec<EntityKey> = self
            .slots
            .iter()
            .filter(|(k, s)| {
                s.entity.is_some() && self.resolver.store().merged_into(&k.1).is_none()
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let Some(def) = self.defs.entities.get(&key.0) else {
                continue;
            };
            let machine = Machine::new(def, as_of);
            let mut slot = self.slots.remove(&key).unwrap_or_default();
            let mut snapshots = Vec::new();
            if let Err(error) = machine.evaluate_rules(&mut slot, as_of, &mut snapshots) {
                failures.push((
                    (as_of, i64::MAX),
                    EventFailure::interpretation(&key.0, &key.1, None, error),
                ));
            }
            let fired = snapshots.iter().filter(|s| s.from_rule).count() as u64;
            if fired > 0 {
                tick.entities_affected += 1;
                tick.effects_produced += fired;
                tick.transitions += snapshots.iter().filter(|s| s.transitioned).count() as u64;
            }
            self.write(&key, &snapshots, written);
            self.slots.insert(key, slot);
        }
        tick
    }

    /// `tick` (§7.5): time rules of every live entity up to `as_of`.
    pub fn tick(&mut self, as_of: Instant) -> TickResult {
        let mut failures = Vec::new();
        let mut written = BTreeSet::new();
        self.sweep(as_of, &mut failures, &mut written)
    }

    /// Every history row of an entity type, ordered by entity id then `valid_from`.
    pub fn rows(&self, entity_type: &str) -> Vec<&crate::history::HistoryRow> {
        self.history
            .iter()
            .filter(|(k, _)| k.0 == entity_type)
            .flat_map(|(_, h)| h.rows.iter())
            .collect()
    }
}

/// Identity lookups for `relate` against the engine's identity store.
struct Lookup<'a> {
    engine: &'a Engine,
    as_of: Instant,
}

impl RelateLookup for Lookup<'_> {
    fn lookup(&self, entity_type: &str, field: &str, value: &str) -> Option<String> {
        self.engine
            .resolver
            .store()
            .get(&Key::new(entity_type, field, value))
    }
    fn normalize_hint(&self, entity_type: &str, field: &str, value: &str) -> String {
        match self.engine.defs.entities.get(entity_type) {
            Some(e) => normalize_hint(e, field, value.to_string(), self.as_of),
            None => value.to_string(),
        }
    }
}
