//! `defacto status [--version V]`: the BuildStatus of the version `build` would build
//! (RESULTS.md §7). Processes nothing.

use clap::Args;
use serde::Serialize;

use crate::catalog::RunRecord;
use crate::cli::{Global, ShardArgs};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::jobs::build::state_key;
use crate::lake::tables;
use crate::ledger::{Columns, EVENTS_SCHEMA};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub version: Option<String>,
    #[command(flatten)]
    pub shard: ShardArgs,
}

/// `BuildStatus` (RESULTS.md §7), with the version it describes.
#[derive(Debug, Clone, Serialize)]
pub struct BuildStatus {
    pub version: String,
    pub active: bool,
    pub cursor: i64,
    pub total_events: i64,
    pub pending_events: i64,
    pub dirty: bool,
    pub last_build_time: Option<String>,
    pub last_build_mode: Option<String>,
    pub watermark: Option<String>,
    pub definition_hash: String,
    pub source_hash: String,
    pub identity_hash: String,
    /// The latest runs of the log (every job, newest first; at most 10), so that a failed
    /// nightly step is visible without the orchestrator's logs.
    pub recent_runs: Vec<RunRecord>,
}

pub async fn run(global: &Global, args: &StatusArgs) -> Result<i32> {
    let ctx = Context::open(global, "status", None).await?;
    let version = args.version.clone().unwrap_or_else(|| ctx.version.clone());
    let row = ctx
        .catalog
        .version(&version)
        .await?
        .ok_or_else(|| Error::NotFound(format!("Version '{version}' not found")))?;
    let state = ctx
        .catalog
        .build_state(&state_key(&version, args.shard.shard()?.map(|s| s.0)), &row)
        .await?;
    let counts = ctx
        .lake
        .query_all(
            &[("events", tables::EVENTS, EVENTS_SCHEMA.clone())],
            &format!(
                "SELECT COUNT(*) AS total, COALESCE(SUM(CASE WHEN sequence > {} THEN 1 ELSE 0 END), 0) AS pending FROM events",
                state.cursor
            ),
        )
        .await?;
    let (mut total, mut pending) = (0, 0);
    for b in &counts {
        let c = Columns::new(b);
        if b.num_rows() > 0 {
            total = c.i64("total")?.value(0);
            pending = c.i64("pending")?.value(0);
        }
    }
    let status = BuildStatus {
        version,
        active: row.active,
        cursor: state.cursor,
        total_events: total,
        pending_events: pending,
        dirty: state.dirty,
        last_build_time: state.last_build_time,
        last_build_mode: state.last_build_mode,
        watermark: state.watermark,
        definition_hash: state.hashes.definition_hash,
        source_hash: state.hashes.source_hash,
        identity_hash: state.hashes.identity_hash,
        recent_runs: ctx.catalog.recent_runs(10).await?,
    };
    ctx.finish(&status).await?;
    Ok(0)
}
