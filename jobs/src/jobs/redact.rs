//! `defacto redact ENTITY_ID`: replaces the entity's sensitive property values in its ledger
//! rows — `data` of `ledger/events` and `raw` of `ledger/raw`, top-level keys named like the
//! property, only keys that exist — with the property's treatment (`redact`, `mask`, `hash`;
//! PIPELINE.md §12.2), then has the entity rebuilt so its history shows the redacted values:
//! at once for the active version when it is built unsharded, and through a rebuild request
//! for every other version and shard at their next build. Redaction is durable: the ledger
//! itself holds the redacted values, so every later build replays them.

use clap::Args;
use defacto_core::normalize::Kept;
use defacto_core::privacy::{redact_keys, sensitive_fields};
use defacto_core::value::Instant;
use deltalake::arrow::array::{ArrayRef, RecordBatch, StringArray};
use serde::Serialize;
use serde_json::Value as Json;
use std::sync::Arc;

use crate::catalog::REDACT;
use crate::cli::Global;
use crate::context::{Context, GLOBAL_LEASE};
use crate::error::{Error, Result};
use crate::jobs::build::{self, parse_as_of, version_definitions, BuildArgs};
use crate::lake::tables;
use crate::ledger::{Columns, ASSIGNMENTS_SCHEMA, EVENTS_SCHEMA, RAW_SCHEMA};

#[derive(Debug, Args)]
pub struct RedactArgs {
    /// The entity whose sensitive values are redacted.
    pub entity_id: String,
    /// The instant of the catch-up build (RFC 3339); default: the wall clock.
    #[arg(long, value_parser = parse_as_of)]
    pub as_of: Option<Instant>,
}

/// The result: ledger rows in which at least one value was replaced.
#[derive(Debug, Clone, Serialize)]
pub struct RedactResult {
    pub entity_id: String,
    pub rows_redacted: u64,
    /// Whether the active version's history was rebuilt at once (else at the next build).
    pub rebuilt: bool,
}

pub async fn run(global: &Global, args: &RedactArgs) -> Result<i32> {
    let ctx = Context::open(global, "redact", args.as_of).await?;
    ctx.conclude(redact(&ctx, args).await).await?;
    Ok(0)
}

async fn redact(ctx: &Context, args: &RedactArgs) -> Result<RedactResult> {
    ctx.lease(GLOBAL_LEASE).await?;
    let id = args.entity_id.as_str();
    let mut result = RedactResult {
        entity_id: id.to_string(),
        rows_redacted: 0,
        rebuilt: false,
    };
    // Bring the ledger up to date, so the rows of every event of the entity are there.
    crate::jobs::normalize::normalize_pending(ctx).await?;
    crate::jobs::resolve::resolve_step(ctx, &ctx.hashes, false).await?;

    let quoted = id.replace('\'', "''");
    let assignments = ctx
        .lake
        .query_map(
            &[("a", tables::ASSIGNMENTS, ASSIGNMENTS_SCHEMA.clone())],
            &format!("SELECT * FROM a WHERE entity_id = '{quoted}' ORDER BY sequence"),
            crate::ledger::read_assignments,
        )
        .await?;
    let Some(entity_type) = assignments.first().map(|(_, t, _)| t.clone()) else {
        return Ok(result);
    };
    let active = ctx.catalog.active_version().await?;
    let defs = match &active {
        Some(row) => version_definitions(ctx, row)?,
        None => (*ctx.defs).clone(),
    };
    let fields = defs
        .entities
        .get(&entity_type)
        .map(sensitive_fields)
        .unwrap_or_default();
    if fields.is_empty() {
        return Ok(result);
    }
    let sequences: Vec<String> = assignments.iter().map(|(s, _, _)| s.to_string()).collect();
    let predicate = format!("sequence IN ({})", sequences.join(", "));
    let mut redacted_rows = std::collections::BTreeSet::new();
    let mut kept = crate::jobs::normalize::kept_entries(ctx).await?;
    let mut kept_changed = Vec::new();
    for (table, schema, column) in [
        (tables::EVENTS, &*EVENTS_SCHEMA, "data"),
        (tables::RAW, &*RAW_SCHEMA, "raw"),
    ] {
        let batches = ctx.lake.read_where(table, schema, &predicate).await?;
        let mut changed_any = false;
        let mut out = Vec::new();
        for b in &batches {
            let c = Columns::new(b);
            let (seq, text) = (c.i64("sequence")?, c.str(column)?);
            let ids = (table == tables::EVENTS)
                .then(|| Ok::<_, Error>((c.str("event_id")?, c.str("resolution_hints")?)))
                .transpose()?;
            let mut values = Vec::with_capacity(b.num_rows());
            for i in 0..b.num_rows() {
                let mut json: Json = serde_json::from_str(text.value(i)).map_err(|e| {
                    Error::Storage(format!("Reading {table} row {} failed: {e}", seq.value(i)))
                })?;
                if redact_keys(&mut json, &fields) {
                    redacted_rows.insert(seq.value(i));
                    // A ledger row keeps its first event id and hints, and its redacted
                    // values, for renormalizations.
                    if let Some((event_id, hints)) = &ids {
                        let entry = kept.entry(seq.value(i)).or_insert_with(|| Kept {
                            event_id: event_id.value(i).to_string(),
                            hints: serde_json::from_str(hints.value(i)).unwrap_or_default(),
                            data: Default::default(),
                        });
                        for field in fields.keys() {
                            if let Some(v) = json.get(field) {
                                entry.data.insert(field.clone(), v.clone());
                            }
                        }
                        kept_changed.push(seq.value(i));
                    }
                    changed_any = true;
                    values.push(json.to_string());
                } else {
                    values.push(text.value(i).to_string());
                }
            }
            let index = b
                .schema()
                .index_of(column)
                .map_err(|e| Error::Storage(e.to_string()))?;
            let mut columns: Vec<ArrayRef> = b.columns().to_vec();
            columns[index] = Arc::new(StringArray::from(values));
            out.push(
                RecordBatch::try_new(b.schema(), columns)
                    .map_err(|e| Error::Storage(format!("Rewriting {table} failed: {e}")))?,
            );
        }
        // What the rows keep is recorded before they change, so a re-run after a crash
        // still finds the original event ids and hints.
        if table == tables::EVENTS && !kept_changed.is_empty() {
            let rows: Vec<(i64, String)> = kept_changed
                .iter()
                .map(|s| {
                    (
                        *s,
                        serde_json::to_string(&kept[s]).expect("kept serializes"),
                    )
                })
                .collect();
            let list: Vec<String> = kept_changed.iter().map(i64::to_string).collect();
            ctx.lake
                .replace_where(
                    tables::REDACTIONS,
                    &format!("sequence IN ({})", list.join(", ")),
                    vec![crate::ledger::redactions_batch(&rows)?],
                )
                .await?;
            crate::jobs::build::crash_point("redact-after-kept");
        }
        if changed_any {
            ctx.lake.replace_where(table, &predicate, out).await?;
            crate::jobs::build::crash_point(&format!(
                "redact-after-{}",
                table.trim_start_matches("ledger/")
            ));
        }
    }
    result.rows_redacted = redacted_rows.len() as u64;
    // An entity redacted before (by a run that may have died before its rebuild) is rebuilt
    // again; one with nothing redacted ever is left alone.
    let redacted_before = assignments.iter().any(|(s, _, _)| kept.contains_key(s));
    if result.rows_redacted == 0 && !redacted_before {
        return Ok(result);
    }
    crate::jobs::build::crash_point("redact-before-request");
    // Every version and shard rebuilds the entity at its next build; the active version, when
    // built unsharded, at once.
    ctx.catalog
        .append_rebuild_request(REDACT, &entity_type, id)
        .await?;
    if let Some(active) = active {
        if build::built_unsharded(ctx, &active.version).await? {
            build::build(
                ctx,
                &BuildArgs {
                    version: Some(active.version),
                    ..BuildArgs::at(ctx.as_of)
                },
            )
            .await?;
            result.rebuilt = true;
        }
    }
    Ok(result)
}
