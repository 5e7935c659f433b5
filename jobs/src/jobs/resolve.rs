//! `defacto resolve`: the resolve step (PIPELINE.md §5.5), once and unsharded, under the global
//! lease — renormalization and identity reset when the definitions require them, then
//! sequential identity resolution of the new events in canonical order, writing
//! `ledger/assignments`, identity, merge_log and rebuild requests. An unsharded `build` runs
//! the same step first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::Instant as Clock;

use clap::Args;
use defacto_core::definitions::Hashes;
use defacto_core::engine::EntityKey;
use defacto_core::identity::{IdentityChanges, IdentityStore, Key, Merge, Resolver, SystemMerge};
use defacto_core::normalize::extract_hints;
use defacto_core::replay::MERGE_EVENT_TYPE;
use defacto_core::results::ResolveResult;
use deltalake::arrow::record_batch::RecordBatch;
use futures::TryStreamExt;

use crate::catalog::{Catalog, ResolveState, IDENTITY_MERGE};
use crate::cli::Global;
use crate::context::{Context, GLOBAL_LEASE};
use crate::error::{Error, Result};
use crate::identity::{Misses, ScopedIdentity};
use crate::jobs::normalize::renormalize;
use crate::lake::{tables, TableWriter};
use crate::ledger::{
    assignments_batch, events_batch, parse_hints, read_events, AssignmentGroups, Columns,
    ASSIGNMENTS_SCHEMA, EVENTS_SCHEMA,
};

#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// Renormalize every raw record first (as `build --from-raw` does).
    #[arg(long)]
    pub from_raw: bool,
}

pub async fn run(global: &Global, args: &ResolveArgs) -> Result<i32> {
    let ctx = Context::open(global, "resolve", None).await?;
    let outcome = async {
        ctx.lease(GLOBAL_LEASE).await?;
        resolve_step(&ctx, &ctx.hashes, args.from_raw).await
    };
    ctx.conclude(outcome.await).await?;
    Ok(0)
}

/// The query of every normalized event with sequence in `(after, ..]`, in canonical order.
/// Only explicit merges' system events carry their data: resolving reads hints, and the data
/// of every other event (like event ids and sources, which resolving never reads) would only
/// cost the sort, parsing and memory.
fn events_sql(after: i64) -> String {
    format!(
        "SELECT sequence, '' AS event_id, event_type, timestamp_ns, '' AS source, resolution_hints,
           CASE WHEN event_type = '{MERGE_EVENT_TYPE}' THEN data ELSE '{{}}' END AS data
         FROM events WHERE sequence > {after} ORDER BY timestamp_ns, sequence"
    )
}

/// Assignments gathered before they are written as one batch.
const ASSIGNMENT_BATCH: usize = 65_536;

/// Writes the gathered assignments to ledger/assignments' open files (not yet committed),
/// grouping them by entity too when `groups` is given.
async fn write_assignments(
    ctx: &Context,
    writer: &mut TableWriter,
    assignments: &mut Vec<(i64, String, String)>,
    groups: Option<&Grouping>,
) -> Result<()> {
    if assignments.is_empty() {
        return Ok(());
    }
    let batch = assignments_batch(assignments)?;
    assignments.clear();
    if let Some(groups) = groups {
        groups.add(&batch);
    }
    writer.write(batch).await?;
    ctx.renew_leases().await
}

/// A pass's assignments grouped by entity on a thread of its own as the pass writes them
/// (the pass itself is sequential: grouping on its thread made it a sixth slower).
struct Grouping {
    batches: mpsc::Sender<RecordBatch>,
    thread: std::thread::JoinHandle<Result<BTreeMap<EntityKey, BTreeSet<i64>>>>,
}

impl Grouping {
    fn start() -> Grouping {
        let (batches, received) = mpsc::channel::<RecordBatch>();
        let thread = std::thread::spawn(move || {
            let mut groups = AssignmentGroups::default();
            for batch in received {
                groups.add(&batch, |_| true)?;
            }
            Ok(groups.finish())
        });
        Grouping { batches, thread }
    }

    fn add(&self, batch: &RecordBatch) {
        // A send fails only when the thread stopped on an error, which `finish` returns.
        let _ = self.batches.send(batch.clone());
    }

    /// No more batches: the thread sorts the groups out while the caller goes on.
    fn close(self) -> Closed {
        drop(self.batches);
        Closed(self.thread)
    }
}

/// A `Grouping` given all its batches.
struct Closed(std::thread::JoinHandle<Result<BTreeMap<EntityKey, BTreeSet<i64>>>>);

impl Closed {
    fn join(self) -> Result<BTreeMap<EntityKey, BTreeSet<i64>>> {
        self.0.join().map_err(|_| {
            Error::Storage("Grouping assignments by entity failed: the thread panicked".into())
        })?
    }
}

/// The resolve step for a version with `hashes` (the shared parts of the FULL-family modes
/// included). The caller holds the global lease.
pub async fn resolve_step(ctx: &Context, hashes: &Hashes, from_raw: bool) -> Result<ResolveResult> {
    let started = Clock::now();
    let mut resolved = resolve_with_identity(ctx, hashes, from_raw, false).await?;
    resolved.unsaved.save(&ctx.catalog).await?;
    resolved.result.duration_ms = started.elapsed().as_millis() as u64;
    Ok(resolved.result)
}

/// A resolve pass whose assignments and merge requests are committed, with the identity it
/// changed still to be saved.
pub struct Resolved {
    pub result: ResolveResult,
    /// The identity store as the pass left it (a build that runs the step goes on with it
    /// instead of loading it again).
    pub identity: ScopedIdentity,
    pub unsaved: UnsavedIdentity,
    /// Every assignment by entity, when asked for and the pass resolved the ledger from its
    /// start: all of ledger/assignments, which a FULL build then need not read back.
    pub assignments: Option<BTreeMap<EntityKey, BTreeSet<i64>>>,
}

/// Identity a resolve pass changed, and the resolve state recording the pass (its cursor past
/// the pass's events, no longer `writing`). Until `save` commits both, the catalog's state
/// still says `writing`: a job that dies before then leaves the next resolve step to reset
/// identity and resolve from the start, as after any interrupted pass.
pub struct UnsavedIdentity {
    changes: IdentityChanges,
    state: ResolveState,
}

impl UnsavedIdentity {
    /// The resolve state once saved.
    pub fn state(&self) -> &ResolveState {
        &self.state
    }

    /// Saves the identity changes, then the resolve state. Nothing else in the catalog reads
    /// or writes identity while this runs: an unsharded FULL build saves during its replay,
    /// which reads identity from memory only.
    pub async fn save(self, catalog: &Catalog) -> Result<()> {
        let started = Clock::now();
        catalog.save_identity(&self.changes).await?;
        catalog.put_resolve_state(&self.state).await?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "identity saved");
        Ok(())
    }
}

/// The resolve step up to saving identity (see `Resolved`); `keep_assignments` asks for the
/// assignments grouped by entity (a build's).
pub async fn resolve_with_identity(
    ctx: &Context,
    hashes: &Hashes,
    from_raw: bool,
    keep_assignments: bool,
) -> Result<Resolved> {
    let started = Clock::now();
    let mut result = ResolveResult::default();
    let mut state = ctx.catalog.resolve_state().await?;
    let salt = ctx.salt_fingerprint();
    if state.source_hash.is_none() {
        record(&mut state, hashes, &salt);
    } else {
        if from_raw || state.source_hash.as_deref() != Some(&hashes.source_hash) {
            let renormalized = renormalize(ctx).await?;
            result.failures = renormalized.failures;
            result.renormalized = true;
            state.reset_due = true;
        }
        let reset = state.reset_due
            || state.writing
            || state.identity_hash.as_deref() != Some(&hashes.identity_hash)
            || state.salt_fingerprint.as_deref() != Some(&salt);
        if reset {
            reset_identity(ctx).await?;
            result.identity_reset = true;
            state.cursor = 0;
            state.reset_due = false;
        }
        record(&mut state, hashes, &salt);
    }
    state.writing = true;
    ctx.catalog.put_resolve_state(&state).await?;

    let loading = Clock::now();
    let from_start = state.cursor == 0;
    let mut store = if from_start {
        ScopedIdentity::whole(&ctx.catalog).await?
    } else {
        identity_for_increment(ctx, state.cursor).await?
    };
    tracing::debug!(
        ms = loading.elapsed().as_millis() as u64,
        whole = store.is_whole(),
        "identity loaded"
    );
    let mut pass = resolve_events(ctx, state.cursor, store, keep_assignments).await?;
    if !pass.misses.is_empty() {
        // The new events' keys bring in everything a pass reads; should one read more, the
        // pass runs again on all of identity (nothing it wrote is committed yet).
        tracing::warn!(
            keys = pass.misses.keys.len(),
            entities = pass.misses.ids.len(),
            "identity read outside the loaded part: resolving again with all of identity"
        );
        pass.writer.abort().await?;
        store = ScopedIdentity::whole(&ctx.catalog).await?;
        pass = resolve_events(ctx, state.cursor, store, keep_assignments).await?;
    }
    result.events_resolved = pass.events;
    result.merges_detected = pass.merges_detected;
    tracing::debug!(ms = loading.elapsed().as_millis() as u64, "events resolved");
    pass.writer.append().await?;
    tracing::debug!(
        ms = loading.elapsed().as_millis() as u64,
        "assignments committed"
    );
    // The groups are sorted out on their thread while this one takes identity's changes.
    let groups = pass.groups.map(Grouping::close);
    let mut identity = pass.resolver.into_store();
    let changes = identity.take_changes();
    let assignments = groups.map(Closed::join).transpose()?;
    tracing::debug!(
        ms = loading.elapsed().as_millis() as u64,
        "identity changes taken"
    );
    ctx.catalog
        .append_merge_requests(IDENTITY_MERGE, &pass.merges)
        .await?;
    state.cursor = pass.head;
    state.writing = false;
    result.events_failed = result.failures.len() as u64;
    result.duration_ms = started.elapsed().as_millis() as u64;
    Ok(Resolved {
        result,
        identity,
        unsaved: UnsavedIdentity { changes, state },
        assignments,
    })
}

/// The part of identity a pass from `cursor` reads: the keys the new events carry (each with
/// its entity's cluster) — or all of it, when that is about as large.
async fn identity_for_increment(ctx: &Context, cursor: i64) -> Result<ScopedIdentity> {
    let keys: BTreeSet<Key> = ctx
        .lake
        .query_map(
            &[("events", tables::EVENTS, EVENTS_SCHEMA.clone())],
            &format!("SELECT sequence, resolution_hints FROM events WHERE sequence > {cursor}"),
            |b| {
                let c = Columns::new(b);
                let (seq, hints) = (c.i64("sequence")?, c.str("resolution_hints")?);
                let mut keys = Vec::new();
                for i in 0..b.num_rows() {
                    for (ty, fields) in parse_hints(hints.value(i), seq.value(i))? {
                        for (field, value) in fields {
                            keys.push(Key::new(ty.as_str(), field.as_str(), value.as_str()));
                        }
                    }
                }
                Ok(keys)
            },
        )
        .await?
        .into_iter()
        .collect();
    tracing::debug!(keys = keys.len(), "the new events' keys read");
    // Loading a key's part takes a few indexed lookups (mapping, cluster, keys, type); loading
    // all of identity, a scan of every mapping.
    let threshold = keys.len().saturating_mul(4);
    if threshold
        >= ctx
            .catalog
            .identity_size(threshold.saturating_add(1))
            .await?
    {
        return ScopedIdentity::whole(&ctx.catalog).await;
    }
    let mut store = ScopedIdentity::empty();
    store.extend(&ctx.catalog, keys, []).await?;
    Ok(store)
}

/// One pass of resolution over the events after `cursor`, in canonical order.
struct Pass {
    resolver: Resolver<ScopedIdentity>,
    /// ledger/assignments' files written (not committed).
    writer: TableWriter,
    merges: Vec<(String, Merge)>,
    merges_detected: u64,
    events: u64,
    /// The highest sequence resolved.
    head: i64,
    /// Identity read outside the loaded part.
    misses: Misses,
    /// The assignments by entity, gathered by a pass from the start of the ledger.
    groups: Option<Grouping>,
}

async fn resolve_events(
    ctx: &Context,
    cursor: i64,
    store: ScopedIdentity,
    keep_assignments: bool,
) -> Result<Pass> {
    let mut resolver = ctx.resolver(store);
    // Events are resolved as the sorted scan hands them over, decoded ahead on other threads
    // while this one resolves, and their assignments go out to ledger/assignments' files as
    // they accumulate (committed by the caller).
    let mut decoded = ctx
        .lake
        .query_ahead(
            &[("events", tables::EVENTS, EVENTS_SCHEMA.clone())],
            &events_sql(cursor),
            read_events,
        )
        .await?;
    let mut writer = ctx.lake.writer(tables::ASSIGNMENTS, &ASSIGNMENTS_SCHEMA);
    let mut assignments = Vec::new();
    let mut merges = Vec::new();
    let mut head = cursor;
    let mut merges_detected = 0;
    let mut events_resolved = 0;
    let from_start = cursor == 0;
    let groups = (from_start && keep_assignments).then(Grouping::start);
    // Where the pass's time goes (debug log): waiting for decoded events (the sorted scan
    // and decoding, beyond what overlaps resolving), resolving, and writing assignments.
    let mut spent = [std::time::Duration::ZERO; 3];
    let mut clock = Clock::now();
    let mut lap = |i: usize| {
        let now = Clock::now();
        spent[i] += now - clock;
        clock = now;
    };
    while let Some(events) = decoded.recv().await {
        let events = events?;
        lap(0);
        events_resolved += events.len() as u64;
        for e in &events {
            head = head.max(e.event.sequence);
            if e.event.event_type == MERGE_EVENT_TYPE {
                // An explicit merge: executed by `merge` itself; a pass from the start replays
                // it at its place in canonical order (PIPELINE.md §11.3).
                if from_start {
                    if let Some(system) = system_merge(&e.event) {
                        if let Some(m) = resolver.replay_merge(&system) {
                            let ty = resolver.store().entity_type(&m.into).unwrap_or_default();
                            merges.push((ty, m));
                        }
                        let into = resolver
                            .store()
                            .merged_into(&system.into_entity_id)
                            .unwrap_or(system.into_entity_id.clone());
                        let ty = resolver.store().entity_type(&into).unwrap_or_default();
                        assignments.push((e.event.sequence, ty, into));
                    }
                }
                continue;
            }
            let resolution = resolver.resolve(&e.hints, e.event.timestamp);
            for (entity_type, id) in resolution.entities {
                assignments.push((e.event.sequence, entity_type, id));
            }
            for m in resolution.merges {
                let ty = resolver.store().entity_type(&m.into).unwrap_or_default();
                merges.push((ty, m));
                merges_detected += 1;
            }
        }
        // Freed on the pool: a batch's hints are many small allocations this thread would
        // otherwise free between resolving one batch and the next.
        rayon::spawn(move || drop(events));
        lap(1);
        if assignments.len() >= ASSIGNMENT_BATCH {
            write_assignments(ctx, &mut writer, &mut assignments, groups.as_ref()).await?;
        }
        lap(2);
    }
    write_assignments(ctx, &mut writer, &mut assignments, groups.as_ref()).await?;
    lap(2);
    let ms = |i: usize| spent[i].as_millis() as u64;
    tracing::debug!(
        waiting_ms = ms(0),
        resolving_ms = ms(1),
        writing_ms = ms(2),
        "resolve pass"
    );
    let misses = resolver.store_mut().take_misses();
    Ok(Pass {
        resolver,
        writer,
        merges,
        merges_detected,
        events: events_resolved,
        head,
        misses,
        groups,
    })
}

/// The stored data of an explicit merge's system event.
fn system_merge(e: &defacto_core::replay::LedgerEvent) -> Option<SystemMerge> {
    let text = |k: &str| e.data.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let hints = |k: &str| serde_json::from_str(&text(k)?).ok();
    Some(SystemMerge {
        from_entity_id: text("from_entity_id")?,
        into_entity_id: text("into_entity_id")?,
        from_hints: hints("from_hints")?,
        into_hints: hints("into_hints")?,
        timestamp: e.timestamp,
    })
}

fn record(state: &mut ResolveState, hashes: &Hashes, salt_fingerprint: &str) {
    state.source_hash = Some(hashes.source_hash.clone());
    state.identity_hash = Some(hashes.identity_hash.clone());
    state.salt_fingerprint = Some(salt_fingerprint.to_string());
}

/// FULL_WITH_IDENTITY_RESET's shared part (PIPELINE.md §10.6): identity, assignments,
/// merge_log and unapplied rebuild requests dropped, every ledger row's hints recomputed
/// from its data with the current identity definitions ([FIX P26]), every build dirty.
async fn reset_identity(ctx: &Context) -> Result<()> {
    // A redacted row keeps the hints it had when first redacted (PIPELINE.md §12.2): its data
    // holds only the redaction marker.
    let kept = crate::jobs::normalize::kept_entries(ctx).await?;
    let mut stream = ctx
        .lake
        .query(
            &[("events", tables::EVENTS, EVENTS_SCHEMA.clone())],
            "SELECT * FROM events ORDER BY sequence",
        )
        .await?;
    let mut writer = ctx.lake.writer(tables::EVENTS, &EVENTS_SCHEMA);
    while let Some(batch) = stream
        .try_next()
        .await
        .map_err(|e| Error::Storage(format!("Reading ledger/events failed: {e}")))?
    {
        let recomputed: Vec<(i64, defacto_core::normalize::NormalizedEvent)> = read_events(&batch)?
            .into_iter()
            .map(|e| {
                let def = ctx
                    .defs
                    .sources
                    .get(&e.event.source)
                    .and_then(|s| s.events.get(&e.event.event_type));
                let hints = match kept.get(&e.event.sequence) {
                    Some(k) => k.hints.clone(),
                    None => def.map_or_else(Default::default, |d| {
                        extract_hints(&ctx.defs, d, &e.event.data, ctx.as_of)
                    }),
                };
                (
                    e.event.sequence,
                    defacto_core::normalize::NormalizedEvent {
                        event_id: e.event.event_id,
                        event_type: e.event.event_type,
                        timestamp: e.event.timestamp,
                        source: e.event.source,
                        data: e.event.data,
                        hints,
                    },
                )
            })
            .collect();
        let rows: Vec<(i64, &defacto_core::normalize::NormalizedEvent)> =
            recomputed.iter().map(|(s, e)| (*s, e)).collect();
        writer.write(events_batch(&rows)?).await?;
    }
    writer.replace().await?;
    ctx.lake
        .overwrite(tables::ASSIGNMENTS, vec![assignments_batch(&[])?])
        .await?;
    ctx.catalog.reset_identity().await?;
    ctx.catalog.dirty_all().await?;
    Ok(())
}
