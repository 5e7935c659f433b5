//! `defacto merge FROM INTO [--reason TEXT] [--as-of T]`: the explicit merge of PIPELINE.md
//! §11.2. It takes the sequence of its system event first, brings the ledger up to date below
//! it (normalize, resolve, and the active version's build when that is unsharded), checks the
//! merge, appends the system event, merges identity and records a rebuild request, which the
//! active version's build applies at once (loser closed, winner rebuilt) and other versions
//! and shards at their next build.

use clap::Args;
use defacto_core::engine::MergeResult;
use defacto_core::fasthash::FastIndexMap;
use defacto_core::identity::{IdentityError, IdentityStore};
use defacto_core::normalize::NormalizedEvent;
use defacto_core::replay::MERGE_EVENT_TYPE;
use defacto_core::value::{timestamp_text, Instant, Value};

use crate::catalog::EXPLICIT_MERGE;
use crate::cli::Global;
use crate::context::{Context, GLOBAL_LEASE};
use crate::error::{Error, Result};
use crate::jobs::build::{self, ledger_where, load_assignments, parse_as_of, BuildArgs};
use crate::jobs::ingest::SEQUENCE_LOCK;
use crate::jobs::normalize::{normalize_pending, write_events};
use crate::lake::tables;
use crate::ledger::assignments_batch;

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The entity merged away.
    pub from: String,
    /// The surviving entity (it keeps its id).
    pub into: String,
    #[arg(long, default_value = "")]
    pub reason: String,
    /// The merge's instant (RFC 3339): the system event's timestamp; default: the wall clock.
    #[arg(long, value_parser = parse_as_of)]
    pub as_of: Option<Instant>,
}

pub async fn run(global: &Global, args: &MergeArgs) -> Result<i32> {
    let ctx = Context::open(global, "merge", args.as_of).await?;
    ctx.conclude(merge(&ctx, args).await).await?;
    Ok(0)
}

fn identity_error(e: IdentityError) -> Error {
    match e.class() {
        "NotFoundError" => Error::NotFound(e.to_string()),
        _ => Error::Identity(e.to_string()),
    }
}

async fn merge(ctx: &Context, args: &MergeArgs) -> Result<MergeResult> {
    ctx.lease(GLOBAL_LEASE).await?;
    ctx.wait_for_lease(SEQUENCE_LOCK).await?;
    let sequence = ctx.catalog.allocate_sequences(1).await?;
    ctx.release_lease(SEQUENCE_LOCK).await?;

    // Catch up below the system event's sequence.
    normalize_pending(ctx).await?;
    let catch_up = BuildArgs::at(ctx.as_of);
    let active = ctx.catalog.active_version().await?;
    // A sharded version applies the merge at its shards' next builds (CONTRACTS J7).
    let active = match active {
        Some(a) if build::built_unsharded(ctx, &a.version).await? => Some(a),
        _ => None,
    };
    if active.is_some() {
        build::build(
            ctx,
            &BuildArgs {
                version: active.as_ref().map(|a| a.version.clone()),
                ..catch_up.clone()
            },
        )
        .await?;
    } else {
        crate::jobs::resolve::resolve_step(ctx, &ctx.hashes, false).await?;
    }

    let store = ctx.catalog.load_identity().await?;
    let mut resolver = ctx.resolver(store);
    let entity_type = resolver
        .check_merge(&args.from, &args.into)
        .map_err(identity_error)?;
    let mut result = MergeResult {
        from_entity_id: args.from.clone(),
        into_entity_id: args.into.clone(),
        events_reassigned: 0,
        entities_rebuilt: 0,
        tombstones_produced: 0,
        failures: Vec::new(),
        duplicate: false,
    };
    let event_id = format!(
        "{MERGE_EVENT_TYPE}:{}:{}:{}",
        args.from,
        args.into,
        timestamp_text(&ctx.as_of)
    );
    // The same merge at the same instant is in the ledger already: the scan filters by id.
    let quoted = event_id.replace('\'', "''");
    if !ledger_where(ctx, &format!("event_id = '{quoted}'"))
        .await?
        .is_empty()
    {
        result.duplicate = true;
        return Ok(result);
    }
    let assignments = load_assignments(ctx).await?;
    let mut cluster = vec![args.from.clone()];
    let mut i = 0;
    while i < cluster.len() {
        cluster.extend(resolver.store().merged_from(&cluster[i]));
        i += 1;
    }
    result.events_reassigned = cluster
        .iter()
        .filter_map(|id| assignments.get(&(entity_type.clone(), id.clone())))
        .map(|s| s.len() as u64)
        .sum();
    let outcome = resolver
        .merge(&args.from, &args.into, ctx.as_of)
        .map_err(identity_error)?;

    let mut data = FastIndexMap::default();
    data.insert("from_entity_id".to_string(), Value::str(args.from.as_str()));
    data.insert("into_entity_id".to_string(), Value::str(args.into.as_str()));
    data.insert("reason".to_string(), Value::str(args.reason.as_str()));
    data.insert(
        "from_hints".to_string(),
        Value::str(serde_json::to_string(&outcome.event.from_hints).expect("hints")),
    );
    data.insert(
        "into_hints".to_string(),
        Value::str(serde_json::to_string(&outcome.event.into_hints).expect("hints")),
    );
    let system = NormalizedEvent {
        event_id,
        event_type: MERGE_EVENT_TYPE.to_string(),
        timestamp: ctx.as_of,
        source: "_defacto".to_string(),
        data,
        hints: Default::default(),
    };
    write_events(ctx, &[(sequence, system)]).await?;
    ctx.lake
        .append(
            tables::ASSIGNMENTS,
            vec![assignments_batch(&[(
                sequence,
                entity_type.clone(),
                args.into.clone(),
            )])?],
        )
        .await?;
    let changes = resolver.store_mut().take_changes();
    ctx.catalog.save_identity(&changes).await?;
    let mut state = ctx.catalog.resolve_state().await?;
    state.cursor = state.cursor.max(sequence);
    ctx.catalog.put_resolve_state(&state).await?;
    if let Some(m) = &outcome.recorded {
        ctx.catalog
            .append_merge_requests(EXPLICIT_MERGE, &[(entity_type.clone(), m.clone())])
            .await?;
    }

    // The active version, when built unsharded, applies the request at once; other versions
    // and shards at their next build.
    if let Some(active) = active {
        let rebuilt = build::build(
            ctx,
            &BuildArgs {
                version: Some(active.version),
                ..catch_up
            },
        )
        .await?;
        result.failures = rebuilt.failures;
        result.entities_rebuilt = 1;
        result.tombstones_produced = outcome.recorded.is_some() as u64;
    }
    Ok(result)
}
