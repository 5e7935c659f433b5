//! One build of one build-state key (PIPELINE.md §10.3–§10.9), independent of storage: given
//! the ledger rows, the assignments, the identity store (for merge chains and `relate`), the
//! working state and the unapplied merges, it computes the new working state and the history
//! changes — entities replaced by a replay, snapshots to apply to the others. The in-memory
//! engine applies the changes to maps; the jobs apply them to Delta tables.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use crate::definitions::mode::BuildMode;
use crate::definitions::Definitions;
use crate::engine::{BuildResult, EntityKey, TickResult};
use crate::fasthash::FastMap;
use crate::history::{EntityHistory, RelationshipHistory};
use crate::identity::{IdentityStore, Key, Merge};
use crate::interpret::{Machine, RelateLookup, Slot, Snapshot};
use crate::normalize::normalize_hint;
use crate::replay::{
    prefetch, replay_entities, EntityJob, EntityReplay, LedgerEvent, MERGE_EVENT_TYPE,
};
use crate::results::EventFailure;
use crate::value::Instant;

/// What a build reads.
pub struct BuildInputs<'a, S: IdentityStore + Sync> {
    pub defs: &'a Definitions,
    /// Every ledger row up to the resolve cursor, sorted by sequence.
    pub ledger: &'a [LedgerEvent],
    /// `event_entities`: entity → its sequences.
    pub assignments: &'a BTreeMap<EntityKey, BTreeSet<i64>>,
    pub identity: &'a S,
    /// Which entity ids this build owns (its shard, §14); every id when unsharded.
    pub owns: &'a (dyn Fn(&str) -> bool + Sync),
    /// The entities a FULL build replays, when the caller has listed them already (those of
    /// `assignments` it owns, in key order — a partition's, say): otherwise found by asking
    /// `owns` of every assigned entity.
    pub entities: Option<&'a [&'a EntityKey]>,
    pub workers: usize,
}

/// Where the build starts from and how it runs.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    pub mode: BuildMode,
    pub as_of: Instant,
    pub cursor: i64,
    pub resolve_cursor: i64,
    pub watermark: Option<Instant>,
    /// Merges the build has not applied yet (rebuild requests, §14), with the entity type.
    pub merges: Vec<(String, Merge)>,
    /// Entities to replay from their events whatever else happens (a `redact` rewrote their
    /// ledger rows, §12.2).
    pub rebuilds: Vec<EntityKey>,
}

impl BuildPlan {
    /// Whether the build replays every entity from its events: a FULL-family mode, or the
    /// first build of a build state (cursor 0: every event is new, so the increment is
    /// everything, and replaying it as a FULL build gives the same history without the
    /// increment's bookkeeping). The mode reported stays the detected one.
    pub fn replays_everything(&self) -> bool {
        self.mode.is_full() || self.cursor == 0
    }
}

/// How one entity's history changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryChange {
    /// The entity was replayed: these are all its rows and its relationship rows as source.
    pub replaced: Option<(EntityHistory, RelationshipHistory)>,
    /// Snapshots to apply after that, in order.
    pub snapshots: Vec<Snapshot>,
}

/// What a build produces.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub result: BuildResult,
    /// A FULL build's changes replace every table of the key (entities not listed have none).
    pub full: bool,
    pub changes: BTreeMap<EntityKey, HistoryChange>,
    /// Working-state slots to write; `None` removes the entity's slot.
    pub slots: BTreeMap<EntityKey, Option<Slot>>,
    pub cursor: i64,
    pub watermark: Option<Instant>,
    /// Where each failure of `result.failures` sits in the canonical order (event instant,
    /// sequence), in the same order: what `absorb` interleaves by.
    pub failure_order: Vec<(Instant, i64)>,
}

impl BuildOutput {
    /// Folds in the output of the same FULL build over other entities (the build split into
    /// partitions of owned ids, each replayed with only the events its entities need): changes
    /// and slots join, counters add up, failures interleave in the order one pass gives them,
    /// the watermark is the later one. Each partition counts the events it was given, so an
    /// event two partitions share (one of a merged entity) is counted twice; the caller that
    /// split the ledger sets `events_processed` and `watermark` from the whole of it.
    pub fn absorb(&mut self, other: BuildOutput) {
        let (mine, theirs) = (&mut self.result, other.result);
        mine.events_processed += theirs.events_processed;
        mine.effects_produced += theirs.effects_produced;
        mine.entities_created += theirs.entities_created;
        mine.entities_updated += theirs.entities_updated;
        mine.merges_detected += theirs.merges_detected;
        mine.late_arrivals += theirs.late_arrivals;
        let mut failures: Failures = std::mem::take(&mut self.failure_order)
            .into_iter()
            .zip(std::mem::take(&mut mine.failures))
            .chain(other.failure_order.into_iter().zip(theirs.failures))
            .collect();
        sort_failures(&mut failures);
        (self.failure_order, mine.failures) = failures.into_iter().unzip();
        mine.events_failed = mine.failures.len() as u64;
        self.full |= other.full;
        self.changes.extend(other.changes);
        self.slots.extend(other.slots);
        self.cursor = self.cursor.max(other.cursor);
        self.watermark = self.watermark.max(other.watermark);
    }
}

/// `id` and every id merged into it, directly or through others: the ids whose events `id`'s
/// replay reads (§5.4).
pub fn cluster<S: IdentityStore>(identity: &S, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![id.to_string()];
    while let Some(next) = stack.pop() {
        stack.extend(identity.merged_from(&next));
        out.push(next);
    }
    out
}

/// The most partitions `partition_masks` tells apart.
pub const MAX_PARTITIONS: usize = 64;

/// For a FULL build split into partitions of the entities (`partition(id)`, below
/// `MAX_PARTITIONS`), which partitions need each ledger row: bit `p` of a sequence's mask is
/// set when an entity of partition `p` replays it — the entity it is assigned to, and every
/// entity that one was merged into. Replaying partition `p` with only its rows (and `owns`
/// narrowed to it), then folding the outputs with `BuildOutput::absorb`, gives the output of
/// one pass over everything.
pub fn partition_masks<S: IdentityStore>(
    assignments: &BTreeMap<EntityKey, BTreeSet<i64>>,
    identity: &S,
    partition: impl Fn(&str) -> usize,
) -> FastMap<i64, u64> {
    let mut masks: FastMap<i64, u64> = FastMap::default();
    for ((ty, id), seqs) in assignments {
        let p = partition(id);
        assert!(p < MAX_PARTITIONS, "partition {p} of {MAX_PARTITIONS}");
        let bit = 1u64 << p;
        for s in seqs {
            *masks.entry(*s).or_default() |= bit;
        }
        for member in identity
            .merged_from(id)
            .iter()
            .flat_map(|m| cluster(identity, m))
        {
            for s in assignments.get(&(ty.clone(), member)).into_iter().flatten() {
                *masks.entry(*s).or_default() |= bit;
            }
        }
    }
    masks
}

/// The order failures are reported in: by event (instant, sequence), then entity.
fn sort_failures(failures: &mut Failures) {
    failures.sort_by(|a, b| {
        (a.0, &a.1.entity_type, &a.1.entity_id).cmp(&(b.0, &b.1.entity_type, &b.1.entity_id))
    });
}

type Failures = Vec<((Instant, i64), EventFailure)>;

/// Runs a build over `slots`, the key's working state, which an incremental build updates in
/// place, the output listing the slots it changed. A FULL build starts afresh and moves every
/// slot into the output, leaving `slots` empty.
pub fn run<S: IdentityStore + Sync>(
    inputs: &BuildInputs<'_, S>,
    plan: &BuildPlan,
    slots: &mut BTreeMap<EntityKey, Slot>,
) -> BuildOutput {
    let mut b = Builder {
        inputs,
        plan,
        changes: BTreeMap::new(),
        failures: Vec::new(),
        result: BuildResult::empty(plan.mode),
        touched_slots: BTreeSet::new(),
        positions: OnceLock::new(),
    };
    let full = plan.replays_everything();
    // What an incremental build counts as updated rather than created.
    let existed: BTreeSet<EntityKey> = if full {
        BTreeSet::new()
    } else {
        slots
            .iter()
            .filter(|(_, s)| s.entity.is_some())
            .map(|(k, _)| k.clone())
            .collect()
    };
    if full {
        slots.clear();
        b.full(slots);
    } else {
        b.incremental(slots);
    }
    let tick = b.sweep(slots, plan.as_of);
    // Entities that never came into existence (ghosts) keep no working state.
    slots.retain(|_, s| *s != Slot::default());
    b.result.effects_produced += tick.effects_produced;
    let written: Vec<EntityKey> = b.changes.keys().cloned().collect();
    if full {
        b.result.entities_created = slots.values().filter(|s| s.entity.is_some()).count() as u64;
    } else {
        for key in &written {
            let exists = slots.get(key).is_some_and(|s| s.entity.is_some());
            if existed.contains(key) {
                b.result.entities_updated += 1;
            } else if exists {
                b.result.entities_created += 1;
            }
        }
    }
    let mut failures = std::mem::take(&mut b.failures);
    sort_failures(&mut failures);
    let failure_order;
    (failure_order, b.result.failures) = failures.into_iter().unzip();
    b.result.events_failed = b.result.failures.len() as u64;
    let out_slots: BTreeMap<EntityKey, Option<Slot>> = if full {
        // Every slot is the output's: moved, not copied (a copy of each entity's properties
        // was 4 % of a FULL build).
        std::mem::take(slots)
            .into_iter()
            .map(|(k, s)| (k, Some(s)))
            .collect()
    } else {
        b.touched_slots
            .iter()
            .map(|k| (k.clone(), slots.get(k).cloned()))
            .collect()
    };
    let max_ts = inputs
        .ledger
        .iter()
        .filter(|e| e.sequence <= plan.resolve_cursor)
        .map(|e| e.timestamp)
        .max();
    BuildOutput {
        result: b.result,
        full,
        changes: b.changes,
        slots: out_slots,
        cursor: plan.cursor.max(plan.resolve_cursor),
        watermark: plan.watermark.max(max_ts),
        failure_order,
    }
}

struct Builder<'a, 'i, S: IdentityStore + Sync> {
    inputs: &'a BuildInputs<'i, S>,
    plan: &'a BuildPlan,
    changes: BTreeMap<EntityKey, HistoryChange>,
    failures: Failures,
    result: BuildResult,
    touched_slots: BTreeSet<EntityKey>,
    /// Where each sequence sits in `inputs.ledger`, made on first use.
    positions: OnceLock<Positions>,
}

/// Where each sequence sits in a ledger slice sorted by sequence. When the sequences are
/// dense enough — their range at most `SPREAD` times the rows: an unpartitioned ledger, whose
/// gaps are only failed and duplicate records, or one partition of a FULL build, whose rows
/// are about one in `MAX_PARTITIONS` — a table from sequence to position answers with one
/// read, for at most `4 * SPREAD` bytes a row (less than a ledger row takes itself);
/// otherwise each lookup is a binary search. (1 M events: a binary search per assigned
/// event, about 20 cache misses each, was 36 % of a FULL build's samples outside the
/// parallel replay.)
enum Positions {
    Table { first: i64, at: Vec<u32> },
    Search,
}

impl Positions {
    /// Positions are `u32`: no table for a slice of 2^32 rows or more.
    const ABSENT: u32 = u32::MAX;
    const SPREAD: u64 = 2 * MAX_PARTITIONS as u64;

    fn new(ledger: &[LedgerEvent]) -> Positions {
        let (Some(first), Some(last)) = (ledger.first(), ledger.last()) else {
            return Positions::Search;
        };
        let span = u64::try_from(last.sequence - first.sequence).unwrap_or(u64::MAX);
        let rows = ledger.len() as u64;
        if span >= Positions::SPREAD * rows || rows >= u64::from(Positions::ABSENT) {
            return Positions::Search;
        }
        let mut at = vec![Positions::ABSENT; span as usize + 1];
        for (i, e) in ledger.iter().enumerate() {
            at[(e.sequence - first.sequence) as usize] = i as u32;
        }
        Positions::Table {
            first: first.sequence,
            at,
        }
    }

    fn find(&self, ledger: &[LedgerEvent], sequence: i64) -> Option<usize> {
        match self {
            Positions::Table { first, at } => {
                let offset = usize::try_from(sequence.checked_sub(*first)?).ok()?;
                let i = *at.get(offset)?;
                (i != Positions::ABSENT).then_some(i as usize)
            }
            Positions::Search => ledger.binary_search_by_key(&sequence, |e| e.sequence).ok(),
        }
    }
}

impl<S: IdentityStore + Sync> Builder<'_, '_, S> {
    fn owns(&self, id: &str) -> bool {
        (self.inputs.owns)(id)
    }

    fn cluster(&self, id: &str) -> Vec<String> {
        cluster(self.inputs.identity, id)
    }

    fn events_of(&self, key: &EntityKey) -> Vec<&LedgerEvent> {
        let cluster = self.cluster(&key.1);
        let (assignments, cursor) = (self.inputs.assignments, self.plan.resolve_cursor);
        let mut seqs: Vec<i64> = Vec::new();
        let mut add = |set: &BTreeSet<i64>| {
            seqs.reserve(set.len());
            seqs.extend(set.range(..=cursor));
        };
        if cluster.len() == 1 {
            // An entity nothing merged into (most): its own key, not a copy to look up by.
            if let Some(set) = assignments.get(key) {
                add(set);
            }
        } else {
            let mut of = (key.0.clone(), String::new());
            for id in &cluster {
                of.1.clone_from(id);
                if let Some(set) = assignments.get(&of) {
                    add(set);
                }
            }
            // One entity's sequences come sorted and distinct; a cluster's may interleave.
            seqs.sort_unstable();
            seqs.dedup();
        }
        let ledger = self.inputs.ledger;
        let positions = self.positions.get_or_init(|| Positions::new(ledger));
        let mut events: Vec<&LedgerEvent> = seqs
            .iter()
            .filter_map(|s| positions.find(ledger, *s).map(|i| &ledger[i]))
            .collect();
        // The rows lie far apart in the ledger: all of them asked of memory before the sort
        // reads the first, so their cache misses overlap.
        for e in &events {
            let at: *const u8 = (*e as *const LedgerEvent).cast();
            for line in (0..std::mem::size_of::<LedgerEvent>()).step_by(64) {
                prefetch(at.wrapping_add(line));
            }
        }
        events.sort_by_key(|e| e.order_key());
        events
    }

    fn job(&self, key: &EntityKey) -> EntityJob<'_> {
        let merged_into = self.inputs.identity.merged_into(&key.1).map(|winner| {
            let ts = self
                .inputs
                .identity
                .merge_time(&key.1)
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

    /// Replays the entities `keys` (each gathering its own events on the pool), in their order.
    fn replay(&self, keys: &[EntityKey]) -> Vec<EntityReplay> {
        let lookup = Lookup {
            defs: self.inputs.defs,
            identity: self.inputs.identity,
            as_of: self.plan.as_of,
        };
        replay_entities(
            self.inputs.defs,
            keys.len(),
            |i| self.job(&keys[i]),
            self.plan.as_of,
            &lookup,
            self.inputs.workers,
        )
    }

    fn install(&mut self, key: EntityKey, r: EntityReplay, slots: &mut BTreeMap<EntityKey, Slot>) {
        self.failures.extend(r.failures);
        self.result.effects_produced += r.snapshots as u64;
        self.changes.insert(
            key.clone(),
            HistoryChange {
                replaced: Some((r.history, r.relationships)),
                snapshots: Vec::new(),
            },
        );
        self.touched_slots.insert(key.clone());
        if r.slot == Slot::default() {
            slots.remove(&key);
        } else {
            slots.insert(key, r.slot);
        }
    }

    fn full(&mut self, slots: &mut BTreeMap<EntityKey, Slot>) {
        self.result.events_processed = self
            .inputs
            .ledger
            .iter()
            .filter(|e| e.sequence <= self.plan.resolve_cursor)
            .count() as u64;
        let keys: Vec<EntityKey> = match self.inputs.entities {
            Some(listed) => listed.iter().map(|k| (*k).clone()).collect(),
            None => self
                .inputs
                .assignments
                .keys()
                .filter(|k| self.owns(&k.1))
                .cloned()
                .collect(),
        };
        // Everything starts empty and the replays come in key order: the maps are built from
        // sorted runs at once (a key compared once, not searched for at every insert).
        let n = keys.len();
        let (mut changes, mut touched, mut kept) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let replays = self.replay(&keys);
        for (key, r) in keys.into_iter().zip(replays) {
            self.failures.extend(r.failures);
            self.result.effects_produced += r.snapshots as u64;
            touched.push(key.clone());
            if !r.history.rows.is_empty() || !r.relationships.rows.is_empty() {
                let change = HistoryChange {
                    replaced: Some((r.history, r.relationships)),
                    snapshots: Vec::new(),
                };
                changes.push((key.clone(), change));
            }
            if r.slot != Slot::default() {
                kept.push((key, r.slot));
            }
        }
        debug_assert!(self.changes.is_empty() && self.touched_slots.is_empty() && slots.is_empty());
        self.changes = changes.into_iter().collect();
        self.touched_slots = touched.into_iter().collect();
        *slots = kept.into_iter().collect();
    }

    fn incremental(&mut self, slots: &mut BTreeMap<EntityKey, Slot>) {
        let (cursor, resolve_cursor) = (self.plan.cursor, self.plan.resolve_cursor);
        let ledger = self.inputs.ledger;
        let mut rows: Vec<&LedgerEvent> = ledger
            .iter()
            .filter(|e| e.sequence > cursor && e.sequence <= resolve_cursor)
            .collect();
        rows.sort_by_key(|e| e.order_key());
        self.result.events_processed = rows.len() as u64;
        let mut by_sequence: BTreeMap<i64, Vec<EntityKey>> = BTreeMap::new();
        for (key, seqs) in self
            .inputs
            .assignments
            .iter()
            .filter(|_| cursor < resolve_cursor)
        {
            for s in seqs.range(cursor + 1..=resolve_cursor) {
                by_sequence.entry(*s).or_default().push(key.clone());
            }
        }
        let mut rebuild: BTreeSet<EntityKey> = BTreeSet::new();
        for event in rows {
            let Some(keys) = by_sequence.get(&event.sequence) else {
                continue;
            };
            for key in keys {
                for target in self.chain(key) {
                    if !self.owns(&target.1) {
                        continue;
                    }
                    let slot = slots.entry(target.clone()).or_default();
                    let late = self.plan.watermark.is_some_and(|w| event.timestamp < w)
                        || slot.horizon.is_some_and(|h| {
                            event.timestamp < h.at || (event.timestamp == h.at && h.by_rule)
                        });
                    if late {
                        self.result.late_arrivals += 1;
                        rebuild.insert(target);
                    } else if !rebuild.contains(&target) {
                        self.apply_one(&target, event, slots);
                    }
                }
            }
        }
        for (ty, m) in &self.plan.merges {
            for id in [&m.from, &m.into] {
                if self.owns(id) {
                    rebuild.insert((ty.clone(), id.clone()));
                }
            }
        }
        rebuild.extend(
            self.plan
                .rebuilds
                .iter()
                .filter(|k| self.owns(&k.1) && slots.contains_key(*k))
                .cloned(),
        );
        self.rebuild(rebuild, slots);
    }

    /// Rebuilds entities from their events (§10.4); their failures replace the ones their
    /// events produced in the pass.
    fn rebuild(&mut self, keys: BTreeSet<EntityKey>, slots: &mut BTreeMap<EntityKey, Slot>) {
        if keys.is_empty() {
            return;
        }
        let keys: Vec<EntityKey> = keys.into_iter().collect();
        let replays = self.replay(&keys);
        for (key, r) in keys.into_iter().zip(replays) {
            self.failures.retain(|(_, f)| {
                !(f.entity_type.as_deref() == Some(key.0.as_str())
                    && f.entity_id.as_deref() == Some(key.1.as_str()))
            });
            self.install(key, r, slots);
        }
    }

    /// The entity a row is assigned to, and each entity on its chain of merges (§10.3).
    fn chain(&self, key: &EntityKey) -> Vec<EntityKey> {
        let mut out = vec![key.clone()];
        let mut id = key.1.clone();
        while let Some(next) = self.inputs.identity.merged_into(&id) {
            out.push((key.0.clone(), next.clone()));
            id = next;
        }
        out
    }

    fn apply_one(
        &mut self,
        key: &EntityKey,
        event: &LedgerEvent,
        slots: &mut BTreeMap<EntityKey, Slot>,
    ) {
        if event.event_type == MERGE_EVENT_TYPE {
            return;
        }
        let Some(def) = self.inputs.defs.entities.get(&key.0) else {
            return;
        };
        let machine = Machine::new(def, self.plan.as_of);
        let slot = slots.entry(key.clone()).or_default();
        let mut snapshots = Vec::new();
        let lookup = Lookup {
            defs: self.inputs.defs,
            identity: self.inputs.identity,
            as_of: self.plan.as_of,
        };
        if let Err(error) = machine.apply_event(slot, &event.view(), &lookup, &mut snapshots) {
            self.failures.push((
                event.order_key(),
                EventFailure::interpretation(&key.0, &key.1, Some(&event.event_id), error),
            ));
        }
        self.touched_slots.insert(key.clone());
        self.record(key, snapshots);
    }

    fn record(&mut self, key: &EntityKey, snapshots: Vec<Snapshot>) {
        if snapshots.is_empty() {
            return;
        }
        self.result.effects_produced += snapshots.len() as u64;
        self.changes
            .entry(key.clone())
            .or_default()
            .snapshots
            .extend(snapshots);
    }

    /// Time rules of every live owned entity up to `as_of` (§7.5).
    fn sweep(&mut self, slots: &mut BTreeMap<EntityKey, Slot>, as_of: Instant) -> TickResult {
        let mut tick = TickResult::default();
        let keys: Vec<EntityKey> = slots
            .iter()
            .filter(|(k, s)| {
                s.entity.is_some()
                    && self.inputs.identity.merged_into(&k.1).is_none()
                    && self.owns(&k.1)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let Some(def) = self.inputs.defs.entities.get(&key.0) else {
                continue;
            };
            let machine = Machine::new(def, as_of);
            let slot = slots.get_mut(&key).expect("listed above");
            let mut snapshots = Vec::new();
            if let Err(error) = machine.evaluate_rules(slot, as_of, &mut snapshots) {
                self.failures.push((
                    (as_of, i64::MAX),
                    EventFailure::interpretation(&key.0, &key.1, None, error),
                ));
            }
            let fired = snapshots.iter().filter(|s| s.from_rule).count() as u64;
            if fired > 0 {
                tick.entities_affected += 1;
                tick.effects_produced += fired;
                tick.transitions += snapshots.iter().filter(|s| s.transitioned).count() as u64;
                self.touched_slots.insert(key.clone());
                self.changes
                    .entry(key.clone())
                    .or_default()
                    .snapshots
                    .extend(snapshots);
            }
        }
        tick
    }
}

/// A `tick` (§7.5) over a key's working state: the snapshots per entity and the counters.
pub fn tick<S: IdentityStore + Sync>(
    inputs: &BuildInputs<'_, S>,
    slots: &mut BTreeMap<EntityKey, Slot>,
    as_of: Instant,
) -> (
    BTreeMap<EntityKey, HistoryChange>,
    TickResult,
    Vec<EventFailure>,
) {
    let plan = BuildPlan {
        mode: BuildMode::Incremental,
        as_of,
        cursor: 0,
        resolve_cursor: 0,
        watermark: None,
        merges: Vec::new(),
        rebuilds: Vec::new(),
    };
    let mut b = Builder {
        inputs,
        plan: &plan,
        changes: BTreeMap::new(),
        failures: Vec::new(),
        result: BuildResult::empty(BuildMode::Incremental),
        touched_slots: BTreeSet::new(),
        positions: OnceLock::new(),
    };
    let result = b.sweep(slots, as_of);
    (
        b.changes,
        result,
        b.failures.into_iter().map(|(_, f)| f).collect(),
    )
}

/// Identity lookups for `relate` against an identity store.
pub struct Lookup<'a, S: IdentityStore> {
    pub defs: &'a Definitions,
    pub identity: &'a S,
    pub as_of: Instant,
}

impl<S: IdentityStore + Sync> RelateLookup for Lookup<'_, S> {
    fn lookup(&self, entity_type: &str, field: &str, value: &str) -> Option<String> {
        self.identity.get(&Key::new(entity_type, field, value))
    }
    fn normalize_hint(&self, entity_type: &str, field: &str, value: &str) -> String {
        match self.defs.entities.get(entity_type) {
            Some(e) => normalize_hint(e, field, value.to_string(), self.as_of),
            None => value.to_string(),
        }
    }
}

/// Applies a build's history changes to in-memory histories (the reference for storage),
/// taking them out of `out`: replayed histories move in whole. A FULL build's histories
/// replace all the others, and arrive in key order: the maps are built from them at once.
pub fn apply_changes(
    history: &mut BTreeMap<EntityKey, EntityHistory>,
    relationships: &mut BTreeMap<EntityKey, RelationshipHistory>,
    defs: &Definitions,
    out: &mut BuildOutput,
) {
    let changes = std::mem::take(&mut out.changes);
    if !out.full {
        for (key, change) in changes {
            apply_change(history, relationships, defs, &key, change);
        }
        return;
    }
    let (mut rows, mut rels) = (Vec::new(), Vec::new());
    for (key, change) in changes {
        let (h, r) = changed(defs, &key, Default::default(), change);
        if !r.rows.is_empty() {
            rels.push((key.clone(), r));
        }
        if !h.rows.is_empty() {
            rows.push((key, h));
        }
    }
    *history = rows.into_iter().collect();
    *relationships = rels.into_iter().collect();
}

/// Applies one key's change, moving a replayed history in (not copied, as the borrowing
/// halves below must).
pub fn apply_change(
    history: &mut BTreeMap<EntityKey, EntityHistory>,
    relationships: &mut BTreeMap<EntityKey, RelationshipHistory>,
    defs: &Definitions,
    key: &EntityKey,
    change: HistoryChange,
) {
    let before = (
        history.remove(key).unwrap_or_default(),
        relationships.remove(key).unwrap_or_default(),
    );
    let (h, r) = changed(defs, key, before, change);
    let empty = h.rows.is_empty();
    put(history, key, h, empty);
    let empty = r.rows.is_empty();
    put(relationships, key, r, empty);
}

/// Stores a key's rows, or removes its entry when it has none left.
fn put<V>(map: &mut BTreeMap<EntityKey, V>, key: &EntityKey, rows: V, empty: bool) {
    if empty {
        map.remove(key);
    } else {
        map.insert(key.clone(), rows);
    }
}

/// A key's entity and relationship rows after `change`, from `before` (its rows so far).
fn changed(
    defs: &Definitions,
    key: &EntityKey,
    before: (EntityHistory, RelationshipHistory),
    change: HistoryChange,
) -> (EntityHistory, RelationshipHistory) {
    let (mut h, mut r) = change.replaced.unwrap_or(before);
    snapshot_rows(&mut h, key, &change.snapshots);
    snapshot_relationships(&mut r, defs, key, &change.snapshots);
    (h, r)
}

fn snapshot_rows(history: &mut EntityHistory, key: &EntityKey, snapshots: &[Snapshot]) {
    for s in snapshots {
        history.apply(&key.1, s);
    }
}

fn snapshot_relationships(
    relationships: &mut RelationshipHistory,
    defs: &Definitions,
    key: &EntityKey,
    snapshots: &[Snapshot],
) {
    for s in snapshots {
        for rec in &s.relationships {
            if crate::replay::declared_relationship(defs, &rec.relationship_type) {
                relationships.apply(
                    &key.1,
                    &rec.relationship_type,
                    &rec.target_entity_id,
                    s.valid_from,
                );
            }
        }
    }
}

/// The entity-row half of a change.
pub fn apply_history_change(
    history: &mut BTreeMap<EntityKey, EntityHistory>,
    key: &EntityKey,
    change: &HistoryChange,
) {
    let mut h = match &change.replaced {
        Some((h, _)) => h.clone(),
        None => history.remove(key).unwrap_or_default(),
    };
    snapshot_rows(&mut h, key, &change.snapshots);
    let empty = h.rows.is_empty();
    put(history, key, h, empty);
}

/// The relationship-row half of a change (rows whose source is the entity).
pub fn apply_relationship_change(
    relationships: &mut BTreeMap<EntityKey, RelationshipHistory>,
    defs: &Definitions,
    key: &EntityKey,
    change: &HistoryChange,
) {
    let mut r = match &change.replaced {
        Some((_, r)) => r.clone(),
        None => relationships.remove(key).unwrap_or_default(),
    };
    snapshot_relationships(&mut r, defs, key, &change.snapshots);
    let empty = r.rows.is_empty();
    put(relationships, key, r, empty);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(sequences: &[i64]) -> Vec<LedgerEvent> {
        sequences
            .iter()
            .map(|&sequence| LedgerEvent {
                sequence,
                event_id: format!("e{sequence}"),
                event_type: "t".into(),
                timestamp: Instant::default(),
                source: "s".into(),
                data: Default::default(),
            })
            .collect()
    }

    #[test]
    fn positions_agree_with_a_search_for_dense_and_sparse_ledgers() {
        // Dense with gaps (a table), sparse (a search), one row, none.
        for sequences in [
            vec![3, 4, 5, 7, 8, 12],
            vec![1, 50, 900, 1_000_000],
            vec![1, 200, 300],
            vec![9],
            vec![],
        ] {
            let rows = ledger(&sequences);
            let positions = Positions::new(&rows);
            let dense = matches!(positions, Positions::Table { .. });
            assert_eq!(dense, sequences.len() != 4 && !sequences.is_empty());
            for probe in -1..=1_000_001 {
                if probe > 20 && !sequences.contains(&probe) && probe % 997 != 0 {
                    continue;
                }
                assert_eq!(
                    positions.find(&rows, probe),
                    rows.binary_search_by_key(&probe, |e| e.sequence).ok(),
                    "sequence {probe} in {sequences:?}"
                );
            }
        }
    }
}
