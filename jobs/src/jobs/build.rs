//! `defacto build`: the resolve step (unsharded), mode detection, then a FULL or INCREMENTAL
//! build of one version (or one shard of it) with the engine's build mechanism, writing SCD2
//! history to `state/<version>/…` and the working state to the catalog; the version becomes
//! active when its build completes (blue/green).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant as Clock};

use clap::Args;
use defacto_core::build::{self, BuildInputs, BuildOutput, BuildPlan, HistoryChange};
use defacto_core::definitions::mode::{detect, BuildMode, CurrentState};
use defacto_core::definitions::Definitions;
use defacto_core::engine::{BuildResult, EntityKey};
use defacto_core::fasthash::FastMap;
use defacto_core::history::{EntityHistory, RelationshipHistory};
use defacto_core::identity::{shard_of, IdentityStore, Merge};
use defacto_core::interpret::Slot;
use defacto_core::replay::LedgerEvent;
use defacto_core::value::{instant_from_nanos, timestamp_text, Instant};
use deltalake::arrow::array::{RecordBatch, UInt32Array};
use deltalake::arrow::compute::{concat_batches, take_record_batch};
use deltalake::arrow::ipc::reader::FileReader;
use deltalake::arrow::ipc::writer::FileWriter;
use futures::TryStreamExt;
use rayon::prelude::*;

use crate::catalog::{parse_instant, VersionRow, ERASED, EXPLICIT_MERGE, IDENTITY_MERGE, REDACT};
use crate::cli::{Global, ShardArgs};
use crate::context::{build_lease, Context, GLOBAL_LEASE};
use crate::error::{Error, Result};
use crate::history_table::{
    entity_batch, entity_schema, group_relationships, group_rows, read_entity_rows,
    read_relationship_rows, relationship_batch, relationship_schema, relationship_types,
};
use crate::identity::ScopedIdentity;
use crate::jobs::resolve::resolve_with_identity;
use crate::lake::{tables, TableWriter};
use crate::ledger::{
    read_ledger_events, read_ledger_rows, AssignmentGroups, Columns, ASSIGNMENTS_SCHEMA,
    EVENTS_SCHEMA,
};
use crate::table_writer::KeyedRows;

#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// Build this registered version instead of the config folder's.
    #[arg(long)]
    pub version: Option<String>,
    /// Rebuild everything (FULL).
    #[arg(long)]
    pub full: bool,
    /// Renormalize every raw record first (FULL_RENORMALIZE).
    #[arg(long)]
    pub from_raw: bool,
    /// The job's instant for time rules and now() (RFC 3339); default: the wall clock.
    #[arg(long, value_parser = parse_as_of)]
    pub as_of: Option<Instant>,
    /// Interpretation threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Exit with status 3 when more events than this fail.
    #[arg(long)]
    pub max_failures: Option<u64>,
}

impl BuildArgs {
    /// An unforced, unsharded build of the folder's version at `as_of`.
    pub fn at(as_of: Instant) -> BuildArgs {
        BuildArgs {
            version: None,
            full: false,
            from_raw: false,
            as_of: Some(as_of),
            workers: 1,
            shard: ShardArgs::default(),
            max_failures: None,
        }
    }
}

pub fn parse_as_of(s: &str) -> std::result::Result<Instant, String> {
    defacto_core::normalize::parse_rfc3339(s).ok_or_else(|| {
        format!("'{s}' is not an RFC 3339 instant with an offset, e.g. 2024-01-10T00:00:00Z")
    })
}

pub async fn run(global: &Global, args: &BuildArgs) -> Result<i32> {
    let ctx = Context::open(global, "build", args.as_of).await?;
    let result = ctx.conclude(build(&ctx, args).await).await?;
    Ok(crate::cli::exit_status(
        result.events_failed,
        args.max_failures,
    ))
}

/// The build-state key of a version (and shard).
pub fn state_key(version: &str, shard: Option<u32>) -> String {
    match shard {
        Some(i) => format!("{version}_s{i}"),
        None => version.to_string(),
    }
}

/// Whether `version` is built unsharded (or not built yet): then commands that change an
/// entity (`merge`, `redact`) rebuild it at once; a sharded version leaves that to the
/// shards' next builds (PIPELINE.md §14, CONTRACTS J7).
pub async fn built_unsharded(ctx: &Context, version: &str) -> Result<bool> {
    let keys = ctx.catalog.build_state_keys().await?;
    let shard_prefix = format!("{version}_s");
    Ok(keys.iter().any(|k| k == version) || !keys.iter().any(|k| k.starts_with(&shard_prefix)))
}

/// A version's definitions: the folder's when it is the folder's version, else the stored
/// document.
pub fn version_definitions(ctx: &Context, row: &VersionRow) -> Result<Definitions> {
    if row.version == ctx.version {
        return Ok((*ctx.defs).clone());
    }
    let doc: serde_json::Value = serde_json::from_str(&row.definitions).map_err(|e| {
        Error::Storage(format!(
            "version '{}' has an unreadable document: {e}",
            row.version
        ))
    })?;
    Ok(Definitions::from_document(&doc)?)
}

pub async fn build(ctx: &Context, args: &BuildArgs) -> Result<BuildResult> {
    let started = Clock::now();
    let shard = args.shard.shard()?;
    let partition_size = partition_size()?;
    let version_name = args.version.clone().unwrap_or_else(|| ctx.version.clone());
    let row = ctx
        .catalog
        .version(&version_name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("Version '{version_name}' not found")))?;
    let defs = version_definitions(ctx, &row)?;
    let key = state_key(&row.version, shard.map(|s| s.0));
    let mut resolve = None;
    let mut resolved_identity = None;
    let mut unsaved = None;
    let mut resolved_assignments = None;
    if shard.is_none() {
        ctx.lease(GLOBAL_LEASE).await?;
    }
    ctx.lease(&build_lease(&key)).await?;
    if shard.is_none() {
        let resolved = resolve_with_identity(ctx, &row.hashes, args.from_raw, true).await?;
        resolve = Some(resolved.result);
        resolved_identity = Some(resolved.identity);
        unsaved = Some(resolved.unsaved);
        resolved_assignments = resolved.assignments;
    } else {
        let rs = ctx.catalog.resolve_state().await?;
        if rs.source_hash.as_deref() != Some(&row.hashes.source_hash)
            || rs.identity_hash.as_deref() != Some(&row.hashes.identity_hash)
            || rs.reset_due
        {
            return Err(Error::Build(format!(
                "the resolve step is not current for version '{}': run `defacto resolve` before the shards' builds",
                row.version
            )));
        }
    }
    let rs = match &unsaved {
        Some(u) => u.state().clone(),
        None => ctx.catalog.resolve_state().await?,
    };
    let mut state = ctx.catalog.build_state(&key, &row).await?;
    let mode = detect(
        &state.stored(),
        &CurrentState {
            hashes: row.hashes.clone(),
            salt_fingerprint: ctx.salt_fingerprint(),
            highest_sequence: rs.cursor,
            force_full: args.full,
            force_from_raw: args.from_raw,
        },
    );
    // A key's first build (cursor 0) replays every event, so every merge recorded so far is
    // still to be applied to it, whenever its record was created.
    let applied = if state.cursor == 0 {
        0
    } else {
        state.requests_applied
    };
    let requests = ctx.catalog.requests_after(applied).await?;
    let requests_end = requests
        .last()
        .map_or(state.requests_applied, |r| r.position);
    let mode = match mode {
        BuildMode::Skip if requests.iter().any(|r| r.kind != ERASED) => BuildMode::Incremental,
        m => m,
    };
    if mode == BuildMode::Skip {
        if let Some(u) = unsaved {
            u.save(&ctx.catalog).await?;
        }
        let complete = state.last_build_time.is_some() && !state.dirty;
        if complete && !row.active && shard.is_none() {
            ctx.catalog.complete_build(&state, true).await?;
        }
        return Ok(BuildResult {
            merges_detected: 0,
            ..BuildResult::empty(mode)
        });
    }
    state.dirty = true;
    ctx.catalog.put_build_state(&state).await?;
    ctx.renew_leases().await?;

    let loading = Clock::now();
    let merges: Vec<(String, Merge)> = requests
        .iter()
        .filter(|r| r.kind == IDENTITY_MERGE || r.kind == EXPLICIT_MERGE)
        .filter_map(|r| {
            Some((
                r.entity_type.clone()?,
                Merge {
                    from: r.loser.clone()?,
                    into: r.winner.clone()?,
                    timestamp: parse_instant(r.timestamp.as_deref()?).ok()?,
                },
            ))
        })
        .collect();
    let rebuilds: Vec<EntityKey> = requests
        .iter()
        .filter(|r| r.kind == REDACT)
        .filter_map(|r| Some((r.entity_type.clone()?, r.entity_id.clone()?)))
        .collect();
    let owns = move |id: &str| shard.is_none_or(|(i, n)| shard_of(id, n) == i);
    let plan = BuildPlan {
        mode,
        as_of: ctx.as_of,
        cursor: state.cursor,
        resolve_cursor: rs.cursor,
        watermark: state.watermark.as_deref().map(parse_instant).transpose()?,
        merges,
        rebuilds,
    };
    // The identity the resolve pass changed is saved while an unsharded FULL build replays
    // with all of identity in memory (the catalog's single SQLite connection is free then);
    // every other build reads identity from the catalog, so saves it first. Either way it is
    // saved before any history is written.
    let full_in_memory = plan.replays_everything()
        && shard.is_none()
        && resolved_identity.as_ref().is_some_and(|i| i.is_whole());
    // The working state saver of a FULL build waits for that save to finish (`identity_saved`):
    // both write through the catalog's one SQLite connection.
    let (saving, identity_saved) = match unsaved {
        Some(u) if full_in_memory => {
            // The replay keeps this thread busy without awaiting.
            let catalog = ctx.catalog.clone();
            let (done, identity_saved) = tokio::sync::oneshot::channel::<()>();
            let saving = Beside::start("Saving identity", move || async move {
                let saved = u.save(&catalog).await;
                let _ = done.send(());
                saved
            });
            (Some(saving), Some(identity_saved))
        }
        Some(u) => {
            u.save(&ctx.catalog).await?;
            (None, None)
        }
        None => (None, None),
    };
    // A build that replays everything reads all of identity; an incremental one, the part its
    // new rows, merges and due slots reach (the resolve pass's part, extended).
    let mut identity = match resolved_identity {
        Some(identity) if identity.is_whole() || !plan.replays_everything() => identity,
        _ if plan.replays_everything() => ScopedIdentity::whole(&ctx.catalog).await?,
        _ => ScopedIdentity::empty(),
    };
    let mut timing = Timing::default();
    // A FULL build's working state is saved by partition, as each is replayed, on a thread
    // of its own (`streamed`); every other build saves it with its history, at the end.
    let mut streamed = None;
    let (mut out, full_tables) = if plan.replays_everything() && shard.is_none() {
        let identity_loaded = Clock::now();
        let (slot_sink, saver) = save_working_state(ctx, &key, &defs, true, identity_saved);
        let full = full_in_partitions(
            ctx,
            &defs,
            &identity,
            resolved_assignments,
            &plan,
            Split {
                workers: args.workers,
                partition_size,
            },
            FullOutputs {
                version: &row.version,
                slots: &slot_sink,
            },
        )
        .await;
        drop(slot_sink);
        // Saved (or failed) before anything else happens, the build's own failure included.
        let identity_result = match saving {
            Some(saving) => saving.join().await,
            None => Ok(()),
        };
        if full.is_err() || identity_result.is_err() {
            let _ = saver.join().await;
        } else {
            streamed = Some(saver);
        }
        identity_result?;
        let full = full?;
        timing = full.timing;
        timing.load += identity_loaded - loading;
        (full.out, Some(full.tables))
    } else {
        timing.load = loading.elapsed();
        let out = loop {
            let pass = Clock::now();
            let (mut inputs, mut slots) = if plan.replays_everything() {
                (Loaded::everything(ctx, rs.cursor).await?, BTreeMap::new())
            } else {
                // Only the slots the build can change: those of the entities its new rows and
                // merges reach, and those with a time rule due before `as_of` (the sweep's).
                let range = format!(
                    "sequence > {} AND sequence <= {}",
                    plan.cursor, plan.resolve_cursor
                );
                let new_assignments = assignments_where(ctx, &range).await?;
                tracing::debug!(ms = ms_since(pass), "new assignments loaded");
                let reached = new_assignments
                    .keys()
                    .chain(plan.rebuilds.iter())
                    .map(|k| k.1.clone())
                    .chain(
                        plan.merges
                            .iter()
                            .flat_map(|(_, m)| [m.from.clone(), m.into.clone()]),
                    );
                identity.extend(&ctx.catalog, [], reached).await?;
                let mut touched: BTreeSet<EntityKey> = new_assignments
                    .keys()
                    .flat_map(|k| chain(&identity, k))
                    .collect();
                for (ty, m) in &plan.merges {
                    touched.insert((ty.clone(), m.from.clone()));
                    touched.insert((ty.clone(), m.into.clone()));
                }
                touched.extend(plan.rebuilds.iter().cloned());
                let slots = ctx
                    .catalog
                    .load_working_state(&key, Some((&due_text(Some(ctx.as_of)), &touched)))
                    .await?;
                let due = slots.keys().map(|k| k.1.clone());
                identity.extend(&ctx.catalog, [], due).await?;
                tracing::debug!(
                    ms = ms_since(pass),
                    slots = slots.len(),
                    "working state loaded"
                );
                let loaded =
                    Loaded::for_increment(ctx, &plan, &identity, &slots, &owns, new_assignments)
                        .await?;
                (loaded, slots)
            };
            let replaying = Clock::now();
            timing.load += replaying - pass;
            let before = slots.clone();
            let mut out = inputs.run(&defs, &identity, &owns, args.workers, &plan, &mut slots);
            // An incremental build loads the events of the entities it expects to rebuild;
            // should it have rebuilt another one, it runs again on the whole ledger.
            if !inputs.complete && !inputs.covers(&out) {
                slots = before;
                inputs = Loaded::everything(ctx, rs.cursor).await?;
                out = inputs.run(&defs, &identity, &owns, args.workers, &plan, &mut slots);
            }
            timing.replay += replaying.elapsed();
            // Identity read outside the loaded part (a `relate` to an entity no new row
            // reaches, say): loaded, and the build runs again.
            let misses = identity.take_misses();
            if misses.is_empty() {
                break out;
            }
            tracing::debug!(
                keys = misses.keys.len(),
                entities = misses.ids.len(),
                "identity read outside the loaded part: loading it and building again"
            );
            identity
                .extend(&ctx.catalog, misses.keys, misses.ids)
                .await?;
        };
        // The history rows written are grouped by the entities' types.
        let changed = out.changes.keys().map(|k| k.1.clone());
        identity.extend(&ctx.catalog, [], changed).await?;
        (out, None)
    };
    let writing = Clock::now();
    crash_point("before-history");
    // History (the lake) and working state (the catalog) are written at the same time: the
    // build state stays dirty until both are, and a dirty build state makes the next build
    // FULL, so a crash or a failure between them, in either order, loses nothing.
    // The working state is saved on a thread of its own: the rewrite of history decodes and
    // encodes on this one.
    let working_state = match streamed {
        Some(saver) => saver,
        None => {
            let (sink, saver) = save_working_state(ctx, &key, &defs, out.full, None);
            let _ = sink.send(std::mem::take(&mut out.slots));
            saver
        }
    };
    let history = async {
        match full_tables {
            Some(tables) => {
                for writer in tables.into_values() {
                    writer.replace().await?;
                }
            }
            None => write_changes(ctx, &defs, &row.version, &identity, &out.changes).await?,
        }
        crash_point("after-history");
        Ok::<_, Error>(writing.elapsed())
    };
    // Both finish (or fail) before the build goes on, whichever fails first.
    let history = history.await;
    let saved = working_state.join().await;
    timing.write_history += history?;
    saved?;
    // Identity is not read past this point: freed on the pool.
    rayon::spawn(move || drop(identity));
    crash_point("after-working-state");

    state.cursor = out.cursor;
    state.watermark = out.watermark.as_ref().map(timestamp_text);
    state.hashes = row.hashes.clone();
    state.salt_fingerprint = ctx.salt_fingerprint();
    state.requests_applied = requests_end;
    state.last_build_time = Some(timestamp_text(&chrono::Utc::now()));
    state.last_build_mode = Some(mode.as_str().to_string());
    // Unsharded, the completing transaction activates the version. A shard first commits its
    // own completion and only then looks at the others: of two shards finishing at once, the
    // one that looks last sees both complete and activates (checking before committing let
    // both see the other unfinished, and nobody activated).
    ctx.catalog.complete_build(&state, shard.is_none()).await?;
    if let Some((_, n)) = shard {
        if ctx
            .catalog
            .all_shards_complete(&row.version, n, &key)
            .await?
        {
            // A shard that started another build meanwhile leaves activation to its own
            // completion; this build's work is committed either way.
            if let Err(e) = ctx.catalog.activate(&row.version).await {
                tracing::warn!("version {} not activated yet: {e}", row.version);
            }
        }
    }

    let mut result = out.result;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    result
        .timing
        .insert("resolve_ms".into(), ms(loading - started));
    result.timing.insert("load_ms".into(), ms(timing.load));
    result.timing.insert("replay_ms".into(), ms(timing.replay));
    result.timing.insert(
        "write_ms".into(),
        ms(writing.elapsed() + timing.history_batches),
    );
    result.timing.insert(
        "write_history_ms".into(),
        ms(timing.write_history + timing.history_batches),
    );
    if let Some(r) = resolve {
        result.merges_detected = r.merges_detected;
        let mut failures = r.failures;
        failures.append(&mut result.failures);
        result.failures = failures;
        result.events_failed = result.failures.len() as u64;
    } else {
        // A shard's build counts the identity-discovered merges whose winner it owns among the
        // requests it applied (RESULTS.md, BuildResult.merges_detected).
        result.merges_detected = requests
            .iter()
            .filter(|r| r.kind == IDENTITY_MERGE && r.winner.as_deref().is_some_and(&owns))
            .count() as u64;
    }
    result.duration_ms = started.elapsed().as_millis() as u64;
    Ok(result)
}

/// Working state a build (or a partition of a FULL build) replayed.
type Slots = BTreeMap<EntityKey, Option<Slot>>;

/// Saves a build's working state, in the slot maps sent to it, on a thread of its own: at the
/// end of a build, or partition by partition as a FULL build replays. It starts once
/// `identity_saved` (when given) says identity's save has freed the catalog's connection. With
/// `clear`, the key's state is cleared first (PIPELINE.md §10.5), with the first map (or at the
/// end, should none come). Each map is saved in a transaction of its own: a crash between two
/// leaves the build state dirty, as it already is, and the next build FULL. A FULL build's
/// partitions own disjoint entities and are saved in the order sent, so the saved state is
/// that of one pass.
fn save_working_state(
    ctx: &Context,
    key: &str,
    defs: &Definitions,
    clear: bool,
    identity_saved: Option<tokio::sync::oneshot::Receiver<()>>,
) -> (tokio::sync::mpsc::UnboundedSender<Slots>, Beside) {
    let (sink, mut source) = tokio::sync::mpsc::unbounded_channel::<Slots>();
    let (catalog, key, defs, as_of) = (
        ctx.catalog.clone(),
        key.to_string(),
        defs.clone(),
        ctx.as_of,
    );
    let saver = Beside::start("Saving working state", move || async move {
        if let Some(saved) = identity_saved {
            let _ = saved.await;
        }
        let due = next_due(&defs, as_of);
        let mut clear = clear;
        while let Some(slots) = source.recv().await {
            let started = Clock::now();
            catalog
                .save_working_state(&key, &slots, clear, &due)
                .await?;
            clear = false;
            tracing::debug!(
                ms = ms_since(started),
                slots = slots.len(),
                "working state saved"
            );
        }
        if clear {
            catalog
                .save_working_state(&key, &Slots::new(), true, &due)
                .await?;
        }
        Ok(())
    });
    (sink, saver)
}

/// A catalog write run on a blocking thread of its own, beside the job's work, and joined
/// later. Its future need not be `Send` (the catalog's row iterators borrow), and the job's
/// thread stays free for its own work, which often does not await for long.
struct Beside {
    what: &'static str,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Beside {
    /// Starts the future `job` makes; `what` names it in the error should its thread stop.
    fn start<F, Fut>(what: &'static str, job: F) -> Beside
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let runtime = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || runtime.block_on(job()));
        Beside { what, task }
    }

    /// Waits for it to finish: its own result.
    async fn join(self) -> Result<()> {
        self.task
            .await
            .map_err(|e| Error::Storage(format!("{} failed: the task stopped: {e}", self.what)))?
    }
}

/// Milliseconds since `start`, for debug timing logs.
fn ms_since(start: Clock) -> u64 {
    start.elapsed().as_millis() as u64
}

/// A test hook: `DEFACTO_CRASH_AT=<point>` aborts the process there, as a crash would
/// (no destructors, no cleanup), so tests can check that the next run repairs everything.
pub(crate) fn crash_point(point: &str) {
    if std::env::var("DEFACTO_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("crashing at {point} (DEFACTO_CRASH_AT)");
        std::process::abort();
    }
}

/// Where a build's time went.
#[derive(Default)]
struct Timing {
    load: Duration,
    replay: Duration,
    /// Turning a partitioned FULL build's histories into Arrow batches.
    history_batches: Duration,
    write_history: Duration,
}

/// Ledger rows per partition of an unsharded FULL build, unless `DEFACTO_BUILD_PARTITION_EVENTS`
/// says otherwise: one partition's decoded events and histories are what the build holds as
/// Rust values at a time.
const PARTITION_EVENTS: i64 = 65_536;

/// Ledger rows per partition of a FULL build: `DEFACTO_BUILD_PARTITION_EVENTS`, or
/// `PARTITION_EVENTS`.
fn partition_size() -> Result<i64> {
    match std::env::var("DEFACTO_BUILD_PARTITION_EVENTS") {
        Ok(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                Error::Config(format!(
                "DEFACTO_BUILD_PARTITION_EVENTS must be a positive number of ledger rows, not '{v}'"
            ))
            }),
        Err(_) => Ok(PARTITION_EVENTS),
    }
}

/// The ledger rows of a partitioned FULL build, sorted into one local Arrow IPC file per
/// partition as they are scanned (a row goes to every partition its mask names), so that a
/// build holds one partition's rows at a time, not the ledger. Files live in a temporary
/// folder (`TMPDIR`) removed when the spill is dropped.
struct PartitionSpill {
    dir: tempfile::TempDir,
    /// Per partition: its open file, and rows waiting to be written as one batch.
    files: Vec<Option<FileWriter<std::io::BufWriter<std::fs::File>>>>,
    waiting: Vec<(Vec<RecordBatch>, usize)>,
}

/// Rows gathered per partition before they are written as one IPC batch.
const SPILL_BATCH_ROWS: usize = 16_384;

impl PartitionSpill {
    fn new(parts: usize) -> Result<PartitionSpill> {
        let dir = tempfile::Builder::new()
            .prefix("defacto-build-")
            .tempdir()
            .map_err(|e| Error::Storage(format!("Creating a temporary folder failed: {e}")))?;
        Ok(PartitionSpill {
            dir,
            files: (0..parts).map(|_| None).collect(),
            waiting: (0..parts).map(|_| (Vec::new(), 0)).collect(),
        })
    }

    fn path(&self, p: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("partition-{p}.arrow"))
    }

    /// Sends each row of `batch` to the partitions its mark names.
    fn add(&mut self, batch: &RecordBatch, marks: &[u64]) -> Result<()> {
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.files.len()];
        for (i, mark) in marks.iter().enumerate() {
            let mut m = *mark;
            while m != 0 {
                rows[m.trailing_zeros() as usize].push(i as u32);
                m &= m - 1;
            }
        }
        for (p, rows) in rows.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let n = rows.len();
            let taken = take_record_batch(batch, &UInt32Array::from(rows)).map_err(spill_error)?;
            let (waiting, count) = &mut self.waiting[p];
            waiting.push(taken);
            *count += n;
            if *count >= SPILL_BATCH_ROWS {
                self.flush(p)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, p: usize) -> Result<()> {
        let (waiting, _) = std::mem::take(&mut self.waiting[p]);
        let Some(schema) = waiting.first().map(|b| b.schema()) else {
            return Ok(());
        };
        let batch = concat_batches(&schema, &waiting).map_err(spill_error)?;
        if self.files[p].is_none() {
            let file = std::fs::File::create(self.path(p))?;
            let writer =
                FileWriter::try_new(std::io::BufWriter::new(file), &schema).map_err(spill_error)?;
            self.files[p] = Some(writer);
        }
        self.files[p]
            .as_mut()
            .expect("opened")
            .write(&batch)
            .map_err(spill_error)
    }

    /// The rows of partition `p` (it is finished first; nothing more may be added to it).
    fn read(&mut self, p: usize) -> Result<Vec<RecordBatch>> {
        self.flush(p)?;
        let Some(mut writer) = self.files[p].take() else {
            return Ok(Vec::new());
        };
        writer.finish().map_err(spill_error)?;
        drop(writer);
        let file = std::fs::File::open(self.path(p))?;
        let reader =
            FileReader::try_new(std::io::BufReader::new(file), None).map_err(spill_error)?;
        let batches = reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(spill_error)?;
        std::fs::remove_file(self.path(p))?;
        Ok(batches)
    }
}

fn spill_error(e: impl std::fmt::Display) -> Error {
    Error::Storage(format!(
        "Spilling ledger rows to a temporary file failed: {e}"
    ))
}

/// A partitioned FULL build's output, with its history tables written but not committed.
struct FullBuild {
    out: BuildOutput,
    tables: BTreeMap<String, TableWriter>,
    timing: Timing,
}

/// How an unsharded FULL build divides its work: interpretation workers, and ledger rows
/// per partition.
#[derive(Debug, Clone, Copy)]
struct Split {
    workers: usize,
    partition_size: i64,
}

/// Where an unsharded FULL build's output goes: the history tables of `version` (written,
/// committed by the caller) and each partition's working state, sent to its saver.
struct FullOutputs<'a> {
    version: &'a str,
    slots: &'a tokio::sync::mpsc::UnboundedSender<Slots>,
}

/// An unsharded FULL build, a partition of the entities at a time (`partition_size` ledger
/// rows each, about; at most `build::MAX_PARTITIONS`). The
/// ledger is scanned once and kept as Arrow batches, each row marked with the partitions that
/// replay it (`build::partition_masks`: its entity's and those its entity was merged into).
/// Each partition's rows are then decoded (batches in parallel), replayed, and its histories
/// turned into Arrow batches before the next partition is decoded: only one partition's events
/// and histories are ever held as Rust values. The outputs fold into the one of a single pass
/// (`BuildOutput::absorb`), and each history table is still written in one commit.
async fn full_in_partitions(
    ctx: &Context,
    defs: &Definitions,
    identity: &ScopedIdentity,
    assignments: Option<BTreeMap<EntityKey, BTreeSet<i64>>>,
    plan: &BuildPlan,
    split: Split,
    outputs: FullOutputs<'_>,
) -> Result<FullBuild> {
    let Split {
        workers,
        partition_size,
    } = split;
    let FullOutputs {
        version,
        slots: slot_sink,
    } = outputs;
    let started = Clock::now();
    // All of ledger/assignments: the resolve pass's own when it went through the whole ledger.
    let assignments = match assignments {
        Some(all) => all,
        None => load_assignments(ctx).await?,
    };
    tracing::debug!(ms = ms_since(started), "assignments loaded");
    let parts = (plan.resolve_cursor.max(1) + partition_size - 1)
        .div_euclid(partition_size)
        .clamp(1, build::MAX_PARTITIONS as i64) as usize;
    // Each entity's partition hashed once (SHA-256, §14), and each partition's entities
    // listed once, in key order: asking every partition of every entity cost a lookup per
    // entity per partition (at 10 M events, 64 partitions of a million entities).
    let mut parts_of: FastMap<&str, usize> = FastMap::default();
    parts_of.reserve(assignments.len());
    let mut listed: Vec<Vec<&EntityKey>> = vec![Vec::new(); parts];
    for key in assignments.keys() {
        let part = shard_of(&key.1, parts as u32) as usize;
        parts_of.insert(key.1.as_str(), part);
        listed[part].push(key);
    }
    let part_of = |id: &str| {
        parts_of
            .get(id)
            .copied()
            .unwrap_or_else(|| shard_of(id, parts as u32) as usize)
    };
    let masks = build::partition_masks(&assignments, identity, part_of);
    let sql = format!(
        "SELECT sequence, event_id, event_type, timestamp_ns, source, data FROM events WHERE sequence <= {}",
        plan.resolve_cursor
    );
    let mut stream = ctx
        .lake
        .query(&[("events", tables::EVENTS, EVENTS_SCHEMA.clone())], &sql)
        .await?;
    let mut spill = PartitionSpill::new(parts)?;
    let (mut events, mut latest) = (0u64, None::<i64>);
    while let Some(batch) = stream
        .try_next()
        .await
        .map_err(|e| Error::Storage(format!("Reading ledger/events failed: {e}")))?
    {
        let c = Columns::new(&batch);
        let (seq, ns) = (c.i64("sequence")?, c.i64("timestamp_ns")?);
        events += batch.num_rows() as u64;
        latest = latest.max(ns.values().iter().copied().max());
        let marks: Vec<u64> = seq
            .values()
            .iter()
            .map(|s| masks.get(s).copied().unwrap_or(0))
            .collect();
        spill.add(&batch, &marks)?;
    }
    drop(masks);
    let mut timing = Timing {
        load: started.elapsed(),
        ..Timing::default()
    };
    let mut folded: Option<BuildOutput> = None;
    let mut tables: BTreeMap<String, TableWriter> = BTreeMap::new();
    for (p, entities) in listed.iter().enumerate() {
        let decoding = Clock::now();
        let decoded = spill
            .read(p)?
            .par_iter()
            .map(read_ledger_events)
            .collect::<Result<Vec<_>>>()?;
        let mut events: Vec<LedgerEvent> = decoded.into_iter().flatten().collect();
        events.sort_unstable_by_key(|e| e.sequence);
        let replaying = Clock::now();
        timing.load += replaying - decoding;
        let owns = |id: &str| part_of(id) == p;
        let inputs = BuildInputs {
            defs,
            ledger: &events,
            assignments: &assignments,
            identity,
            owns: &owns,
            entities: Some(entities),
            workers: workers.max(1),
        };
        let mut slots = BTreeMap::new();
        let mut out = build::run(&inputs, plan, &mut slots);
        // Freed on the pool while this thread goes on (a partition's events and histories
        // are millions of small allocations: freeing them here held up the next partition).
        rayon::spawn(move || drop((events, slots)));
        let converting = Clock::now();
        timing.replay += converting - replaying;
        // Each partition's rows go out to the tables' files at once; the tables are replaced
        // (committed) together after the replay.
        for (table, batch) in full_history_batches(defs, version, &out.changes)? {
            if !tables.contains_key(&table) {
                let writer = ctx.lake.history_writer(&table, &batch.schema());
                tables.insert(table.clone(), writer);
            }
            tables
                .get_mut(&table)
                .expect("just inserted")
                .write(batch)
                .await?;
        }
        let changes = std::mem::take(&mut out.changes);
        rayon::spawn(move || drop(changes));
        // Should the saver have stopped, its error is reported when it is joined.
        let _ = slot_sink.send(std::mem::take(&mut out.slots));
        timing.history_batches += converting.elapsed();
        tracing::debug!(partition = p, of = parts, "partition replayed");
        match folded.as_mut() {
            None => folded = Some(out),
            Some(f) => f.absorb(out),
        }
    }
    let mut out = folded.expect("a FULL build has at least one partition");
    drop((parts_of, listed));
    rayon::spawn(move || drop(assignments));
    // Rows of merged entities were replayed by several partitions; count each once, as the
    // latest event of the whole ledger sets the watermark.
    out.result.events_processed = events;
    out.watermark = plan
        .watermark
        .max(latest.and_then(|ns| instant_from_nanos(ns as i128)));
    Ok(FullBuild {
        out,
        tables,
        timing,
    })
}

/// The ledger rows and assignments a build replays.
struct Loaded {
    ledger: Vec<LedgerEvent>,
    assignments: BTreeMap<EntityKey, BTreeSet<i64>>,
    /// Everything up to the resolve cursor (FULL), or only what an increment needs.
    complete: bool,
    /// The entities whose complete events are loaded.
    rebuildable: BTreeSet<EntityKey>,
}

impl Loaded {
    async fn everything(ctx: &Context, cursor: i64) -> Result<Loaded> {
        Ok(Loaded {
            ledger: ledger_up_to(ctx, cursor).await?,
            assignments: load_assignments(ctx).await?,
            complete: true,
            rebuildable: BTreeSet::new(),
        })
    }

    /// The new rows, their assignments, and all the events of the entities the build will
    /// rebuild — late entities (§10.3 step 4) and both sides of unapplied merges.
    async fn for_increment(
        ctx: &Context,
        plan: &BuildPlan,
        identity: &ScopedIdentity,
        slots: &BTreeMap<EntityKey, Slot>,
        owns: &(dyn Fn(&str) -> bool + Sync),
        new_assignments: BTreeMap<EntityKey, BTreeSet<i64>>,
    ) -> Result<Loaded> {
        let range = format!(
            "sequence > {} AND sequence <= {}",
            plan.cursor, plan.resolve_cursor
        );
        let started = Clock::now();
        let new_events = ledger_where(ctx, &range).await?;
        tracing::debug!(ms = ms_since(started), "new ledger rows loaded");
        // (the new rows' assignments are loaded by the caller)
        let timestamps: BTreeMap<i64, Instant> = new_events
            .iter()
            .map(|e| (e.sequence, e.timestamp))
            .collect();
        let mut rebuild: BTreeSet<EntityKey> = BTreeSet::new();
        for (key, seqs) in &new_assignments {
            for target in chain(identity, key) {
                let slot = slots.get(&target);
                let late = seqs.iter().filter_map(|s| timestamps.get(s)).any(|ts| {
                    plan.watermark.is_some_and(|w| *ts < w)
                        || slot
                            .and_then(|s| s.horizon)
                            .is_some_and(|h| *ts < h.at || (*ts == h.at && h.by_rule))
                });
                if late && owns(&target.1) {
                    rebuild.insert(target);
                }
            }
        }
        for (ty, m) in &plan.merges {
            for id in [&m.from, &m.into] {
                rebuild.insert((ty.clone(), id.clone()));
            }
        }
        rebuild.extend(plan.rebuilds.iter().cloned());
        let mut ids: BTreeSet<String> = BTreeSet::new();
        for (_, id) in &rebuild {
            let mut stack = vec![id.clone()];
            while let Some(next) = stack.pop() {
                stack.extend(identity.merged_from(&next));
                ids.insert(next);
            }
        }
        let mut assignments = new_assignments;
        let mut ledger = new_events;
        if !ids.is_empty() {
            let theirs = assignments_of(ctx, &ids).await?;
            let seqs: BTreeSet<i64> = theirs
                .values()
                .flatten()
                .copied()
                .filter(|s| *s <= plan.cursor)
                .collect();
            ledger.extend(ledger_rows(ctx, &seqs).await?);
            for (key, s) in theirs {
                assignments.entry(key).or_default().extend(s);
            }
        }
        ledger.sort_unstable_by_key(|e| e.sequence);
        ledger.dedup_by_key(|e| e.sequence);
        Ok(Loaded {
            ledger,
            assignments,
            complete: false,
            rebuildable: rebuild,
        })
    }

    fn run(
        &self,
        defs: &Definitions,
        identity: &ScopedIdentity,
        owns: &(dyn Fn(&str) -> bool + Sync),
        workers: usize,
        plan: &BuildPlan,
        slots: &mut BTreeMap<EntityKey, Slot>,
    ) -> BuildOutput {
        let inputs = BuildInputs {
            defs,
            ledger: &self.ledger,
            assignments: &self.assignments,
            identity,
            owns,
            entities: None,
            workers: workers.max(1),
        };
        build::run(&inputs, plan, slots)
    }

    /// Whether every entity the build replayed had its events loaded.
    fn covers(&self, out: &BuildOutput) -> bool {
        out.changes
            .iter()
            .filter(|(_, c)| c.replaced.is_some())
            .all(|(k, _)| self.rebuildable.contains(k))
    }
}

/// An instant as fixed-width text that sorts chronologically (the `next_due` column);
/// `NEVER` sorts after every instant.
pub fn due_text(t: Option<Instant>) -> String {
    t.map_or_else(
        || "NEVER".to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.9f").to_string(),
    )
}

/// The `next_due` of a slot under the version's time rules.
pub fn next_due(defs: &Definitions, as_of: Instant) -> impl Fn(&EntityKey, &Slot) -> String + '_ {
    move |key, slot| {
        let crossing = defs
            .entities
            .get(&key.0)
            .and_then(|def| defacto_core::interpret::Machine::new(def, as_of).next_crossing(slot));
        due_text(crossing)
    }
}

/// The entity a row is assigned to, and each entity on its chain of merges.
fn chain(identity: &impl IdentityStore, key: &EntityKey) -> Vec<EntityKey> {
    let mut out = vec![key.clone()];
    let mut id = key.1.clone();
    while let Some(next) = identity.merged_into(&id) {
        out.push((key.0.clone(), next.clone()));
        id = next;
    }
    out
}

/// Ledger rows matching a SQL condition, read batch by batch.
pub(crate) async fn ledger_where(ctx: &Context, condition: &str) -> Result<Vec<LedgerEvent>> {
    let sql = format!(
        "SELECT sequence, event_id, event_type, timestamp_ns, source, data FROM events WHERE {condition}"
    );
    ctx.lake
        .query_map(
            &[("events", tables::EVENTS, EVENTS_SCHEMA.clone())],
            &sql,
            read_ledger_events,
        )
        .await
}

/// Assignments matching a SQL condition, as entity → sequences.
pub(crate) async fn assignments_where(
    ctx: &Context,
    condition: &str,
) -> Result<BTreeMap<EntityKey, BTreeSet<i64>>> {
    let sql = format!("SELECT sequence, entity_type, entity_id FROM assignments WHERE {condition}");
    grouped_assignments(ctx, &sql, |_| true).await
}

/// The assignments a query returns, those of entity ids `keep` accepts, grouped as the
/// batches arrive.
async fn grouped_assignments(
    ctx: &Context,
    sql: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<BTreeMap<EntityKey, BTreeSet<i64>>> {
    let tables = [(
        "assignments",
        tables::ASSIGNMENTS,
        ASSIGNMENTS_SCHEMA.clone(),
    )];
    let mut stream = ctx.lake.query(&tables, sql).await?;
    let mut groups = AssignmentGroups::default();
    while let Some(batch) = stream
        .try_next()
        .await
        .map_err(|e| Error::Storage(format!("Reading ledger/assignments failed: {e}")))?
    {
        groups.add(&batch, &keep)?;
    }
    Ok(groups.finish())
}

/// Every ledger row up to the resolve cursor, sorted by sequence, read batch by batch.
pub async fn ledger_up_to(ctx: &Context, cursor: i64) -> Result<Vec<LedgerEvent>> {
    let mut out = ledger_where(ctx, &format!("sequence <= {cursor}")).await?;
    out.sort_unstable_by_key(|e| e.sequence);
    Ok(out)
}

/// The ledger rows with the given sequences. They are picked out of a scan of their range as
/// each batch arrives: an SQL `IN` list of thousands of values is walked one stack frame per
/// value by the Delta scan's predicate conversion.
pub(crate) async fn ledger_rows(ctx: &Context, seqs: &BTreeSet<i64>) -> Result<Vec<LedgerEvent>> {
    let (Some(first), Some(last)) = (seqs.first(), seqs.last()) else {
        return Ok(Vec::new());
    };
    let sql = format!(
        "SELECT sequence, event_id, event_type, timestamp_ns, source, data FROM events
         WHERE sequence >= {first} AND sequence <= {last}"
    );
    ctx.lake
        .query_map(
            &[("events", tables::EVENTS, EVENTS_SCHEMA.clone())],
            &sql,
            |b| read_ledger_rows(b, |s| seqs.contains(&s)),
        )
        .await
}

/// The assignments of the given entity ids, as entity → sequences (picked out of a scan, as
/// `ledger_rows` does).
pub(crate) async fn assignments_of(
    ctx: &Context,
    ids: &BTreeSet<String>,
) -> Result<BTreeMap<EntityKey, BTreeSet<i64>>> {
    let sql = "SELECT sequence, entity_type, entity_id FROM assignments";
    grouped_assignments(ctx, sql, |id| ids.contains(id)).await
}

/// `ledger/assignments` as entity → sequences.
pub async fn load_assignments(ctx: &Context) -> Result<BTreeMap<EntityKey, BTreeSet<i64>>> {
    assignments_where(ctx, "TRUE").await
}

/// Writes history changes by entity: the rows of every entity in `changes` are replaced (old
/// and new rows in one commit per table). An incremental build, a sharded FULL build (its
/// shard's entities) and `tick` write this way; an unsharded FULL build replaces whole tables
/// (`full_in_partitions`).
pub async fn write_changes(
    ctx: &Context,
    defs: &Definitions,
    version: &str,
    identity: &impl IdentityStore,
    changes: &BTreeMap<EntityKey, HistoryChange>,
) -> Result<()> {
    let entity_type_of = |id: &str| identity.entity_type(id);
    // An entity replayed whole (`replaced`) has every row rewritten; one that only took
    // snapshots needs its current row, which the snapshots close and follow.
    let appended: HashSet<&str> = changes
        .iter()
        .filter(|(_, c)| c.replaced.is_none())
        .map(|(k, _)| k.1.as_str())
        .collect();
    let appended = &appended;
    let ids: HashSet<&str> = changes.keys().map(|k| k.1.as_str()).collect();
    let ids = &ids;
    let entity_type_of = &entity_type_of;
    // Each table is rewritten by a future of its own, all at once: one table's reads and
    // commit wait on storage while another's rows are made.
    let mut rewrites: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + '_>>> =
        Vec::new();
    for (name, entity) in &defs.entities {
        let keys: Vec<&EntityKey> = changes.keys().filter(|k| &k.0 == name).collect();
        if keys.is_empty() {
            continue;
        }
        rewrites.push(Box::pin(async move {
            let table = tables::history(version, name);
            let ids: HashSet<&str> = keys.iter().map(|k| k.1.as_str()).collect();
            let column = format!("{name}_id");
            let new_rows = |old: Vec<RecordBatch>, unseen: &HashSet<String>| {
                // An entity's rows may span batches: grouped once, all together.
                let mut rows = Vec::new();
                for b in &old {
                    rows.extend(read_entity_rows(entity, b)?);
                }
                let mut histories = group_rows(name, rows);
                for key in &keys {
                    let change = &changes[*key];
                    // Closed rows not read are left as they are: right when the entity's
                    // current row was read and no snapshot comes before it.
                    if unseen.contains(&key.1) {
                        let current = histories
                            .get(*key)
                            .and_then(|h| h.rows.last())
                            .filter(|r| r.valid_to.is_none())
                            .map(|r| r.valid_from);
                        let follows = current.is_some_and(|from| {
                            change.snapshots.iter().all(|s| s.valid_from >= from)
                        });
                        if !follows {
                            return Ok(None);
                        }
                    }
                    build::apply_history_change(&mut histories, key, change);
                }
                let rows: Vec<_> = histories.values().flat_map(|h| h.rows.iter()).collect();
                Ok(Some(vec![entity_batch(entity, &rows)?]))
            };
            let target = KeyedRows {
                table: &table,
                schema: &entity_schema(entity),
                column: &column,
                keys: &ids,
            };
            let started = Clock::now();
            ctx.lake.replace_keys(&target, appended, new_rows).await?;
            tracing::debug!(ms = ms_since(started), table, "history rows replaced");
            Ok(())
        }));
    }
    // Relationship rows belong to their source entity. A snapshot only opens relationship
    // rows, after the last one of its kind: the open rows are all it needs.
    if !ids.is_empty() {
        for rel in relationship_types(defs) {
            rewrites.push(Box::pin(async move {
                let table = tables::relationship_history(version, &rel);
                let schema = relationship_schema(defs, &rel);
                let new_rows = |old: Vec<RecordBatch>, _: &HashSet<String>| {
                    let mut rows = Vec::new();
                    for b in &old {
                        rows.extend(read_relationship_rows(b)?);
                    }
                    let rels = group_relationships(entity_type_of, rows);
                    Ok(Some(vec![relationships_after(defs, &rel, rels, changes)?]))
                };
                let target = KeyedRows {
                    table: &table,
                    schema: &schema,
                    column: "source_id",
                    keys: ids,
                };
                let started = Clock::now();
                ctx.lake.replace_keys(&target, appended, new_rows).await?;
                tracing::debug!(ms = ms_since(started), table, "relationship rows replaced");
                Ok(())
            }));
        }
    }
    futures::future::try_join_all(rewrites).await?;
    Ok(())
}

/// History rows per Arrow batch of a FULL build.
const HISTORY_BATCH_ROWS: usize = 8_192;

/// The history rows of a FULL build's changes (of one partition): batches of each history
/// table of the version, every table (an empty batch for one without rows), as replacing them
/// all takes.
fn full_history_batches(
    defs: &Definitions,
    version: &str,
    changes: &BTreeMap<EntityKey, HistoryChange>,
) -> Result<Vec<(String, RecordBatch)>> {
    let mut out = Vec::new();
    for (name, entity) in &defs.entities {
        // Each entity's rows on their own (a FULL build starts from no history), in key
        // order; a replay's rows are borrowed, not copied, unless snapshots follow it.
        let mut histories: Vec<Cow<'_, EntityHistory>> = Vec::new();
        for (key, change) in changes.iter().filter(|(k, _)| &k.0 == name) {
            match &change.replaced {
                Some((history, _)) if change.snapshots.is_empty() => {
                    histories.push(Cow::Borrowed(history));
                }
                _ => {
                    let mut one = BTreeMap::new();
                    build::apply_history_change(&mut one, key, change);
                    histories.extend(one.into_values().map(Cow::Owned));
                }
            }
        }
        let rows: Vec<_> = histories.iter().flat_map(|h| h.rows.iter()).collect();
        let table = tables::history(version, name);
        if rows.is_empty() {
            out.push((table, entity_batch(entity, &[])?));
            continue;
        }
        // Batches of a partition's rows are built in parallel.
        let batches = rows
            .par_chunks(HISTORY_BATCH_ROWS)
            .map(|part| entity_batch(entity, part))
            .collect::<Result<Vec<_>>>()?;
        out.extend(batches.into_iter().map(|b| (table.clone(), b)));
    }
    for rel in relationship_types(defs) {
        out.push((
            tables::relationship_history(version, &rel),
            relationships_after(defs, &rel, BTreeMap::new(), changes)?,
        ));
    }
    Ok(out)
}

/// The rows of relationship type `rel` once `changes` are applied to `rels` (their source
/// entities' relationship histories before), as one batch.
fn relationships_after(
    defs: &Definitions,
    rel: &str,
    mut rels: BTreeMap<EntityKey, RelationshipHistory>,
    changes: &BTreeMap<EntityKey, HistoryChange>,
) -> Result<RecordBatch> {
    for (key, change) in changes {
        build::apply_relationship_change(&mut rels, defs, key, change);
    }
    let rows: Vec<_> = rels
        .values()
        .flat_map(|r| r.all())
        .filter(|r| r.relationship_type == rel)
        .collect();
    relationship_batch(defs, rel, &rows)
}

/// A slot map's entry count, for logs.
pub fn live(slots: &BTreeMap<EntityKey, Slot>) -> usize {
    slots.values().filter(|s| s.entity.is_some()).count()
}
