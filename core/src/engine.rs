//! The in-memory engine: the whole pipeline of PIPELINE.md over a ledger held in memory —
//! ingest (normalize + deduplicate), the resolve step (with renormalization and identity
//! reset), FULL and INCREMENTAL builds with late-arrival and merge rebuilds, explicit merges,
//! and ticks. It is the reference every storage job must agree with row for row; the jobs
//! reuse its pieces (normalizer, resolver, machine, replay) on batches streamed from the lake.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant as Clock;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::build::{self, BuildInputs, BuildOutput, BuildPlan};
use crate::definitions::mode::{detect, BuildMode, CurrentState, StoredState};
use crate::definitions::{Definitions, Hashes, NormalizedDocument};
use crate::fasthash::{FastIndexMap, FastMap};
use crate::identity::{
    shard_of, IdentityError, IdentityFields, IdentityStore, MemoryIdentity, Merge, Resolver,
    SystemMerge,
};
use crate::interpret::Slot;
use crate::normalize::{extract_hints, normalize_call, Hints, NormalizedEvent, Normalizer};
use crate::replay::{LedgerEvent, MERGE_EVENT_TYPE};
use crate::results::{EventFailure, IngestResult};
use crate::value::{timestamp_text, Instant, Value};

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

impl BuildResult {
    /// A result with every counter 0 (SKIP, and the start of every build).
    pub fn empty(mode: BuildMode) -> BuildResult {
        BuildResult {
            mode,
            events_processed: 0,
            effects_produced: 0,
            entities_created: 0,
            entities_updated: 0,
            merges_detected: 0,
            late_arrivals: 0,
            duration_ms: 0,
            events_failed: 0,
            failures: Vec::new(),
            timing: BTreeMap::new(),
        }
    }
}

/// `TickResult` (RESULTS.md §4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickResult {
    pub effects_produced: u64,
    pub entities_affected: u64,
    pub transitions: u64,
}

/// `MergeResult` (RESULTS.md §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeResult {
    pub from_entity_id: String,
    pub into_entity_id: String,
    pub events_reassigned: u64,
    pub entities_rebuilt: u64,
    pub tombstones_produced: u64,
    pub failures: Vec<EventFailure>,
    pub duplicate: bool,
}

/// Options of a build (`build --full`, `--from-raw`, `--as-of`).
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    pub as_of: Instant,
    pub full: bool,
    pub from_raw: bool,
}

impl BuildOptions {
    pub fn at(as_of: Instant) -> BuildOptions {
        BuildOptions {
            as_of,
            full: false,
            from_raw: false,
        }
    }
}

/// A record as `ingest` received it (`ledger/raw`).
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    pub sequence: i64,
    /// The first sequence of the ingest call it came with.
    pub call: i64,
    pub source: String,
    pub raw: Json,
}

/// Values kept per ledger sequence. Sequences are dense from 1 (`next_sequence`), so they
/// index a vector: the resolve pass reads every event's hints in canonical order, close to
/// sequence order, where a hash map put each read at a random address.
#[derive(Debug)]
struct BySequence<T>(Vec<Option<T>>);

impl<T> Default for BySequence<T> {
    fn default() -> Self {
        BySequence(Vec::new())
    }
}

impl<T> BySequence<T> {
    fn index(sequence: i64) -> usize {
        usize::try_from(sequence - 1).expect("ledger sequences start at 1")
    }

    fn insert(&mut self, sequence: i64, value: T) {
        let i = Self::index(sequence);
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i] = Some(value);
    }

    /// The value of `sequence`, which must have one.
    fn get(&self, sequence: i64) -> &T {
        self.0
            .get(Self::index(sequence))
            .and_then(Option::as_ref)
            .expect("a value for every sequence read")
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The in-memory pipeline.
pub struct Engine {
    defs: Definitions,
    hashes: Hashes,
    raw: Vec<RawRow>,
    /// Non-duplicate ledger rows (normalized events and system events), by sequence.
    ledger: Vec<LedgerEvent>,
    hints: BySequence<Hints>,
    system: FastMap<i64, SystemMerge>,
    /// event id → sequence of its canonical row.
    canonical: FastMap<String, i64>,
    next_sequence: i64,
    resolver: Resolver<MemoryIdentity>,
    resolve_cursor: i64,
    /// The source and identity hashes the ledger and the identity store were last made
    /// uniform under (§5.5); `None` on a fresh store.
    resolved_under: Option<(String, String)>,
    /// `event_entities`: entity → the sequences assigned to it (never re-pointed, O1).
    assignments: BTreeMap<EntityKey, BTreeSet<i64>>,
    /// Merges whose loser closing and winner rebuild the build has not applied yet (§14).
    pending_merges: Vec<(String, Merge)>,
    stored: Option<StoredState>,
    cursor: i64,
    watermark: Option<Instant>,
    workers: usize,
    pub slots: BTreeMap<EntityKey, Slot>,
    pub history: BTreeMap<EntityKey, crate::history::EntityHistory>,
    pub relationships: BTreeMap<EntityKey, crate::history::RelationshipHistory>,
}

/// A source the definitions do not define (`ingest`, CONTRACTS C15).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Source '{0}' not found in definitions")]
pub struct UnknownSource(pub String);

impl Engine {
    pub fn new(defs: Definitions) -> Engine {
        let hashes = NormalizedDocument::of(&defs).hashes();
        let resolver = Resolver::new(
            IdentityFields::from_definitions(&defs),
            None,
            MemoryIdentity::new(),
        );
        Engine {
            defs,
            hashes,
            raw: Vec::new(),
            ledger: Vec::new(),
            hints: BySequence::default(),
            system: FastMap::default(),
            canonical: FastMap::default(),
            next_sequence: 1,
            resolver,
            resolve_cursor: 0,
            resolved_under: None,
            assignments: BTreeMap::new(),
            pending_merges: Vec::new(),
            stored: None,
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

    /// The config folder changed: the next build detects its mode against the hashes of the
    /// last completed build (DEFINITIONS.md §8.4).
    pub fn set_definitions(&mut self, defs: Definitions) {
        self.hashes = NormalizedDocument::of(&defs).hashes();
        self.defs = defs;
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

    /// The sequences assigned to each entity (`event_entities`).
    pub fn assignments(&self) -> &BTreeMap<EntityKey, BTreeSet<i64>> {
        &self.assignments
    }

    /// One `ingest` call followed by `normalize` (PIPELINE.md §1, §2): every record takes the
    /// next sequence in input order; the call is deduplicated as a unit (§2.9).
    pub fn ingest(
        &mut self,
        source: &str,
        raws: &[Json],
        as_of: Instant,
    ) -> Result<IngestResult, UnknownSource> {
        if !self.defs.sources.contains_key(source) {
            return Err(UnknownSource(source.to_string()));
        }
        let call = self.next_sequence;
        let rows: Vec<RawRow> = raws
            .iter()
            .enumerate()
            .map(|(i, raw)| RawRow {
                sequence: call + i as i64,
                call,
                source: source.to_string(),
                raw: raw.clone(),
            })
            .collect();
        self.next_sequence += raws.len() as i64;
        let mut result = IngestResult::default();
        let accepted = self.normalize_call(&rows, as_of, &mut result);
        self.canonical.reserve(accepted.len());
        self.ledger.reserve(accepted.len());
        for (sequence, e) in accepted {
            self.append(sequence, e);
        }
        self.raw.extend(rows);
        result.events_failed = result.failures.len() as u64;
        Ok(result)
    }

    /// Normalizes one call's raw rows and deduplicates them against the canonical rows.
    fn normalize_call(
        &self,
        rows: &[RawRow],
        as_of: Instant,
        result: &mut IngestResult,
    ) -> Vec<(i64, NormalizedEvent)> {
        let normalizer = Normalizer::new(&self.defs, as_of);
        let records = rows.iter().map(|r| (r.sequence, r.source.as_str(), &r.raw));
        let call = normalize_call(&normalizer, records, |id| self.canonical.contains_key(id));
        result
            .failures
            .extend(call.failures.into_iter().map(|(_, f)| f));
        result.duplicates_skipped += call.duplicate_ids.len() as u64;
        result.duplicate_ids.extend(call.duplicate_ids);
        result.events_ingested += call.accepted.len() as u64;
        call.accepted
    }

    fn append(&mut self, sequence: i64, e: NormalizedEvent) {
        self.canonical.insert(e.event_id.clone(), sequence);
        self.hints.insert(sequence, e.hints);
        let row = LedgerEvent {
            sequence,
            event_id: e.event_id,
            event_type: e.event_type,
            timestamp: e.timestamp,
            source: e.source,
            data: e.data,
        };
        let at = self.ledger.partition_point(|r| r.sequence < sequence);
        self.ledger.insert(at, row);
    }

    /// FULL_RENORMALIZE's shared part (§10.7 steps 1–3): every raw record again, calls in
    /// sequence order, with the current sources; system events are kept.
    fn renormalize(&mut self, as_of: Instant) -> Vec<EventFailure> {
        let system: Vec<LedgerEvent> = self
            .ledger
            .iter()
            .filter(|e| e.event_type == MERGE_EVENT_TYPE)
            .cloned()
            .collect();
        self.ledger = system;
        self.hints.clear();
        self.canonical.clear();
        for e in &self.ledger {
            self.canonical.insert(e.event_id.clone(), e.sequence);
        }
        let raw = std::mem::take(&mut self.raw);
        let mut result = IngestResult::default();
        let mut start = 0;
        while start < raw.len() {
            let call = raw[start].call;
            let end = start + raw[start..].iter().take_while(|r| r.call == call).count();
            for (sequence, e) in self.normalize_call(&raw[start..end], as_of, &mut result) {
                self.append(sequence, e);
            }
            start = end;
        }
        self.raw = raw;
        result.failures
    }

    /// The identity reset's shared part (§10.6): identity, assignments, merge_log and
    /// unapplied merges dropped; hints recomputed from `data` with the current identity
    /// definitions ([FIX P26]).
    fn reset_identity(&mut self, as_of: Instant) {
        self.resolver = Resolver::new(
            IdentityFields::from_definitions(&self.defs),
            None,
            MemoryIdentity::new(),
        );
        self.assignments.clear();
        self.pending_merges.clear();
        for e in &self.ledger {
            if e.event_type == MERGE_EVENT_TYPE {
                continue;
            }
            let event_def = self
                .defs
                .sources
                .get(&e.source)
                .and_then(|s| s.events.get(&e.event_type));
            let hints = match event_def {
                Some(def) => extract_hints(&self.defs, def, &e.data, as_of),
                None => Hints::new(),
            };
            self.hints.insert(e.sequence, hints);
        }
        self.resolve_cursor = 0;
        if let Some(s) = self.stored.as_mut() {
            s.dirty = true;
        }
    }

    /// The resolve step (§5.5). Returns (merges detected, renormalization failures).
    fn resolve_step(&mut self, as_of: Instant, from_raw: bool) -> (u64, Vec<EventFailure>) {
        let current = (
            self.hashes.source_hash.clone(),
            self.hashes.identity_hash.clone(),
        );
        let mut failures = Vec::new();
        match self.resolved_under.clone() {
            None => self.resolved_under = Some(current.clone()),
            Some((source_hash, identity_hash)) => {
                let renormalize = from_raw || source_hash != current.0;
                if renormalize {
                    failures = self.renormalize(as_of);
                }
                if renormalize || identity_hash != current.1 {
                    self.reset_identity(as_of);
                }
                self.resolved_under = Some(current);
            }
        }
        let from_start = self.resolve_cursor == 0;
        // The pass's assignments, gathered by entity and added to the ordered map at the end:
        // one tree search per entity instead of one per event.
        let mut assigned: FastMap<EntityKey, Vec<i64>> = FastMap::default();
        let mut rows: Vec<(Instant, i64)> = self
            .ledger
            .iter()
            .filter(|e| e.sequence > self.resolve_cursor)
            .map(|e| e.order_key())
            .collect();
        rows.sort();
        let mut merges = 0;
        for (timestamp, sequence) in rows {
            if let Some(system) = self.system.get(&sequence) {
                if from_start {
                    let system = system.clone();
                    if let Some(m) = self.resolver.replay_merge(&system) {
                        self.record_pending(m);
                    }
                    let into = self
                        .resolver
                        .store()
                        .merged_into(&system.into_entity_id)
                        .unwrap_or(system.into_entity_id.clone());
                    assigned
                        .entry(self.entity_key(&into))
                        .or_default()
                        .push(sequence);
                }
                continue;
            }
            let resolution = self.resolver.resolve(self.hints.get(sequence), timestamp);
            for (entity_type, id) in resolution.entities {
                assigned
                    .entry((entity_type, id))
                    .or_default()
                    .push(sequence);
            }
            for m in resolution.merges {
                self.record_pending(m);
                merges += 1;
            }
        }
        for (key, seqs) in assigned {
            self.assignments.entry(key).or_default().extend(seqs);
        }
        let head = self.ledger.last().map_or(0, |e| e.sequence);
        self.resolve_cursor = self.resolve_cursor.max(head);
        (merges, failures)
    }

    fn record_pending(&mut self, m: Merge) {
        let ty = self
            .resolver
            .store()
            .entity_type(&m.into)
            .unwrap_or_default();
        self.pending_merges.push((ty, m));
    }

    /// The key of entity `id`: its type as identity records it, and the id.
    fn entity_key(&self, id: &str) -> EntityKey {
        let ty = self.resolver.store().entity_type(id).unwrap_or_default();
        (ty, id.to_string())
    }

    fn assign(&mut self, id: &str, sequence: i64) {
        let key = self.entity_key(id);
        self.assignments.entry(key).or_default().insert(sequence);
    }

    /// The ids whose events include those of `id` (§5.4): `id` and every entity merged into
    /// it, recursively.
    fn cluster(&self, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![id.to_string()];
        while let Some(next) = stack.pop() {
            stack.extend(self.resolver.store().merged_from(&next));
            out.push(next);
        }
        out
    }

    /// A build (§10.3–§10.9): resolve step, mode detection, FULL or INCREMENTAL, sweep.
    pub fn build(&mut self, opts: BuildOptions) -> BuildResult {
        let started = Clock::now();
        let (merges_detected, renormalization_failures) =
            self.resolve_step(opts.as_of, opts.from_raw);
        let resolved = Clock::now();
        let stored = self.stored.clone().unwrap_or_else(|| StoredState {
            hashes: self.hashes.clone(),
            ..StoredState::default()
        });
        let mode = detect(
            &StoredState {
                cursor: self.cursor,
                ..stored
            },
            &CurrentState {
                hashes: self.hashes.clone(),
                salt_fingerprint: String::new(),
                highest_sequence: self.resolve_cursor,
                force_full: opts.full,
                force_from_raw: opts.from_raw,
            },
        );
        let mode = match mode {
            BuildMode::Skip if !self.pending_merges.is_empty() => BuildMode::Incremental,
            m => m,
        };
        if mode == BuildMode::Skip {
            return BuildResult::empty(mode);
        }
        self.stored.get_or_insert_with(StoredState::default).dirty = true;
        let plan = BuildPlan {
            mode,
            as_of: opts.as_of,
            cursor: self.cursor,
            resolve_cursor: self.resolve_cursor,
            watermark: self.watermark,
            merges: std::mem::take(&mut self.pending_merges),
            rebuilds: Vec::new(),
        };
        let out = self.execute(&plan);
        self.cursor = out.cursor;
        self.watermark = out.watermark;
        let mut result = out.result;
        result.merges_detected = merges_detected;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        result
            .timing
            .insert("resolve_ms".into(), ms(resolved - started));
        result
            .timing
            .insert("build_ms".into(), ms(resolved.elapsed()));
        let mut failures = renormalization_failures;
        failures.append(&mut result.failures);
        result.failures = failures;
        result.events_failed = result.failures.len() as u64;
        self.stored = Some(StoredState {
            hashes: self.hashes.clone(),
            salt_fingerprint: String::new(),
            dirty: false,
            cursor: self.cursor,
        });
        result.duration_ms = started.elapsed().as_millis() as u64;
        result
    }

    /// A FULL replay of the entities one shard owns (§14): `shard_hash(id) mod total`. The
    /// union over all shards equals the replay of every entity.
    pub fn replay_shard(
        &mut self,
        as_of: Instant,
        shard_id: u32,
        total_shards: u32,
    ) -> BTreeMap<EntityKey, crate::history::EntityHistory> {
        self.resolve_step(as_of, false);
        let owns = move |id: &str| shard_of(id, total_shards) == shard_id;
        let plan = BuildPlan {
            mode: BuildMode::Full,
            as_of,
            cursor: 0,
            resolve_cursor: self.resolve_cursor,
            watermark: None,
            merges: Vec::new(),
            rebuilds: Vec::new(),
        };
        let inputs = self.inputs(&owns);
        let mut slots = BTreeMap::new();
        let out = build::run(&inputs, &plan, &mut slots);
        out.changes
            .into_iter()
            .filter_map(|(k, c)| c.replaced.map(|(h, _)| (k, h)))
            .filter(|(_, h)| !h.rows.is_empty())
            .collect()
    }

    fn inputs<'a>(
        &'a self,
        owns: &'a (dyn Fn(&str) -> bool + Sync),
    ) -> BuildInputs<'a, MemoryIdentity> {
        BuildInputs {
            defs: &self.defs,
            ledger: &self.ledger,
            assignments: &self.assignments,
            identity: self.resolver.store(),
            owns,
            entities: None,
            workers: self.workers,
        }
    }

    /// Runs one build plan and applies its output to the working state and the history.
    fn execute(&mut self, plan: &BuildPlan) -> BuildOutput {
        let all = |_: &str| true;
        let mut slots = std::mem::take(&mut self.slots);
        let mut out = {
            let inputs = self.inputs(&all);
            build::run(&inputs, plan, &mut slots)
        };
        self.slots = if out.full {
            std::mem::take(&mut out.slots)
                .into_iter()
                .filter_map(|(k, s)| Some((k, s?)))
                .collect()
        } else {
            slots
        };
        build::apply_changes(
            &mut self.history,
            &mut self.relationships,
            &self.defs,
            &mut out,
        );
        out
    }

    /// `tick` (§7.5): time rules of every live entity up to `as_of`.
    pub fn tick(&mut self, as_of: Instant) -> TickResult {
        let all = |_: &str| true;
        let mut slots = std::mem::take(&mut self.slots);
        let (changes, result, _) = {
            let inputs = self.inputs(&all);
            build::tick(&inputs, &mut slots, as_of)
        };
        self.slots = slots;
        for (key, change) in changes {
            build::apply_change(
                &mut self.history,
                &mut self.relationships,
                &self.defs,
                &key,
                change,
            );
        }
        result
    }

    /// An explicit merge (§11.2): the ledger is brought up to date first, then the merge is
    /// checked, recorded as a system event, executed on identity, and the loser and the
    /// winner are rebuilt.
    pub fn merge(
        &mut self,
        from: &str,
        into: &str,
        reason: &str,
        as_of: Instant,
    ) -> Result<MergeResult, IdentityError> {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.build(BuildOptions::at(as_of));
        let entity_type = self.resolver.check_merge(from, into)?;
        let mut result = MergeResult {
            from_entity_id: from.to_string(),
            into_entity_id: into.to_string(),
            events_reassigned: 0,
            entities_rebuilt: 0,
            tombstones_produced: 0,
            failures: Vec::new(),
            duplicate: false,
        };
        let event_id = format!(
            "{MERGE_EVENT_TYPE}:{from}:{into}:{}",
            timestamp_text(&as_of)
        );
        if self.canonical.contains_key(&event_id) {
            result.duplicate = true;
            return Ok(result);
        }
        result.events_reassigned = self
            .cluster(from)
            .iter()
            .filter_map(|id| self.assignments.get(&(entity_type.clone(), id.clone())))
            .map(|s| s.len() as u64)
            .sum();
        let outcome = self.resolver.merge(from, into, as_of)?;
        let mut data = FastIndexMap::default();
        data.insert("from_entity_id".to_string(), Value::str(from));
        data.insert("into_entity_id".to_string(), Value::str(into));
        data.insert("reason".to_string(), Value::str(reason));
        self.canonical.insert(event_id.clone(), sequence);
        self.system.insert(sequence, outcome.event);
        self.ledger.push(LedgerEvent {
            sequence,
            event_id,
            event_type: MERGE_EVENT_TYPE.to_string(),
            timestamp: as_of,
            source: "_defacto".to_string(),
            data,
        });
        self.ledger.sort_by_key(|e| e.sequence);
        self.assign(into, sequence);
        self.resolve_cursor = self.resolve_cursor.max(sequence);
        let merge = match &outcome.recorded {
            Some(m) => {
                result.tombstones_produced = 1;
                m.clone()
            }
            None => Merge {
                from: into.to_string(),
                into: into.to_string(),
                timestamp: as_of,
            },
        };
        result.entities_rebuilt = 1;
        let plan = BuildPlan {
            mode: BuildMode::Incremental,
            as_of,
            cursor: self.resolve_cursor,
            resolve_cursor: self.resolve_cursor,
            watermark: self.watermark,
            merges: vec![(entity_type, merge)],
            rebuilds: Vec::new(),
        };
        let out = self.execute(&plan);
        self.cursor = self.cursor.max(sequence);
        result.failures = out.result.failures;
        Ok(result)
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
