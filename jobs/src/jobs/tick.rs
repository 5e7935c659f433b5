//! `defacto tick [--as-of T] [--version V]`: time rules of every live entity of the active
//! version or of version V (or of
//! one shard's entities) up to `as_of` (PIPELINE.md §7.5). Results do not depend on how
//! often it runs.

use clap::Args;
use defacto_core::build::{self, BuildInputs};
use defacto_core::engine::TickResult;
use defacto_core::identity::shard_of;
use defacto_core::value::Instant;

use crate::cli::{Global, ShardArgs};
use crate::context::{build_lease, Context};
use crate::error::{Error, Result};
use crate::jobs::build::{
    due_text, next_due, parse_as_of, state_key, version_definitions, write_changes,
};

#[derive(Debug, Args)]
pub struct TickArgs {
    /// The instant to evaluate time rules at (RFC 3339); default: the wall clock.
    #[arg(long, value_parser = parse_as_of)]
    pub as_of: Option<Instant>,
    /// The definition version whose entities are ticked; default: the active one (a version
    /// built beside the active one is ticked before it is switched to).
    #[arg(long)]
    pub version: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    #[command(flatten)]
    pub shard: ShardArgs,
}

pub async fn run(global: &Global, args: &TickArgs) -> Result<i32> {
    let ctx = Context::open(global, "tick", args.as_of).await?;
    ctx.conclude(tick(&ctx, args).await).await?;
    Ok(0)
}

async fn tick(ctx: &Context, args: &TickArgs) -> Result<TickResult> {
    let shard = args.shard.shard()?;
    let row = match &args.version {
        Some(v) => ctx
            .catalog
            .version(v)
            .await?
            .ok_or_else(|| Error::NotFound(format!("Unknown definition version '{v}'")))?,
        None => ctx
            .catalog
            .active_version()
            .await?
            .ok_or_else(|| Error::Config("No active definition version".into()))?,
    };
    let defs = version_definitions(ctx, &row)?;
    let key = state_key(&row.version, shard.map(|s| s.0));
    ctx.lease(&build_lease(&key)).await?;
    let identity = ctx.catalog.load_identity().await?;
    let none = std::collections::BTreeSet::new();
    let mut slots = ctx
        .catalog
        .load_working_state(&key, Some((&due_text(Some(ctx.as_of)), &none)))
        .await?;
    let assignments = Default::default();
    let owns = move |id: &str| shard.is_none_or(|(i, n)| shard_of(id, n) == i);
    let inputs = BuildInputs {
        defs: &defs,
        ledger: &[],
        assignments: &assignments,
        identity: &identity,
        owns: &owns,
        entities: None,
        workers: args.workers.max(1),
    };
    let (changes, result, _failures) = build::tick(&inputs, &mut slots, ctx.as_of);
    write_changes(ctx, &defs, &row.version, &identity, &changes).await?;
    let touched = changes
        .keys()
        .map(|k| (k.clone(), slots.get(k).cloned()))
        .collect();
    ctx.catalog
        .save_working_state(&key, &touched, false, &next_due(&defs, ctx.as_of))
        .await?;
    Ok(result)
}
