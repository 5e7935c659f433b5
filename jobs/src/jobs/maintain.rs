//! `defacto maintain`: keeps the lake's tables healthy for large ledgers — compacts small
//! files (each `ingest` and incremental build commits its own small files), writes a
//! checkpoint of each Delta log, and vacuums files no longer referenced and older than the
//! retention period.

use std::num::NonZeroU64;

use clap::Args;
use serde::Serialize;

use crate::cli::Global;
use crate::context::{Context, GLOBAL_LEASE};
use crate::error::{Error, Result};
use crate::history_table::relationship_types;
use crate::jobs::build::version_definitions;
use crate::lake::tables;

#[derive(Debug, Args)]
pub struct MaintainArgs {
    /// Target size of compacted files, in MiB.
    #[arg(long, default_value_t = 128)]
    pub target_file_mib: u64,
    /// Files removed from tables longer ago than this are deleted (time travel keeps working
    /// within it).
    #[arg(long, default_value_t = 168)]
    pub retention_hours: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct TableMaintenance {
    pub table: String,
    pub files_compacted: u64,
    pub files_written: u64,
    pub files_vacuumed: u64,
    pub version: Option<u64>,
}

pub async fn run(global: &Global, args: &MaintainArgs) -> Result<i32> {
    let ctx = Context::open(global, "maintain", None).await?;
    let outcome = async {
        ctx.lease(GLOBAL_LEASE).await?;
        maintain(&ctx, args).await
    };
    ctx.conclude(outcome.await).await?;
    Ok(0)
}

async fn maintain(ctx: &Context, args: &MaintainArgs) -> Result<Vec<TableMaintenance>> {
    let mut names: Vec<String> = [
        tables::RAW,
        tables::EVENTS,
        tables::ASSIGNMENTS,
        tables::DEAD_LETTERS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(active) = ctx.catalog.active_version().await? {
        let defs = version_definitions(ctx, &active)?;
        names.extend(
            defs.entities
                .keys()
                .map(|e| tables::history(&active.version, e)),
        );
        names.extend(
            relationship_types(&defs)
                .iter()
                .map(|r| tables::relationship_history(&active.version, r)),
        );
    }
    let storage =
        |op: &str, e: deltalake::DeltaTableError| Error::Storage(format!("{op} failed: {e}"));
    let mut out = Vec::new();
    for name in names {
        let Some(table) = ctx.lake.open(&name).await? else {
            continue;
        };
        let target = NonZeroU64::new(args.target_file_mib.max(1) * 1024 * 1024).expect("non-zero");
        let (table, metrics) = table
            .optimize()
            .with_target_size(target)
            .await
            .map_err(|e| storage(&format!("Compacting {name}"), e))?;
        deltalake::checkpoints::create_checkpoint(&table, None)
            .await
            .map_err(|e| storage(&format!("Checkpointing {name}"), e))?;
        let (table, vacuumed) = table
            .vacuum()
            .with_retention_period(chrono::Duration::hours(args.retention_hours.max(0)))
            .with_enforce_retention_duration(false)
            .await
            .map_err(|e| storage(&format!("Vacuuming {name}"), e))?;
        out.push(TableMaintenance {
            table: name,
            files_compacted: metrics.num_files_removed,
            files_written: metrics.num_files_added,
            files_vacuumed: vacuumed.files_deleted.len() as u64,
            version: table.version(),
        });
        ctx.renew_leases().await?;
    }
    Ok(out)
}
