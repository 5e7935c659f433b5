//! `defacto erase ENTITY_ID`: removes an entity — and every entity merged into it — from the
//! lake and the catalog database, physically (PIPELINE.md §12.1 and its erasure guarantee).
//!
//! It takes every lease (the global one and every build state's, all versions and shards),
//! brings the ledger up to date, and works from a plan it stores first (cascade set, erased
//! identity keys, the ledger sequences involved), so that a run that dies half-way is finished
//! by running it again: every step is idempotent and the clean-up steps always run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use clap::Args;
use defacto_core::definitions::Definitions;
use defacto_core::privacy::ErasedValues;
use defacto_core::value::Instant;
use deltalake::arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray};
use deltalake::arrow::compute::filter_record_batch;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::cli::Global;
use crate::context::{build_lease, default_database, Context, DeadLetterSink, GLOBAL_LEASE};
use crate::error::{Error, Result};
use crate::history_table::{relationship_types, sql_list};
use crate::jobs::build::{crash_point, parse_as_of, version_definitions};
use crate::lake::tables;
use crate::ledger::{
    Columns, ASSIGNMENTS_SCHEMA, DEAD_LETTERS_SCHEMA, EVENTS_SCHEMA, RAW_SCHEMA, REDACTIONS_SCHEMA,
};
use crate::warehouse::Warehouse;

#[derive(Debug, Args)]
pub struct EraseArgs {
    /// The entity to erase (entities merged into it are erased with it).
    pub entity_id: String,
    /// The instant of the catch-up before the erase (RFC 3339); default: the wall clock.
    #[arg(long, value_parser = parse_as_of)]
    pub as_of: Option<Instant>,
}

/// RESULTS.md §6.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EraseResult {
    pub entity_id: String,
    pub entities_erased: u64,
    pub events_deleted: u64,
    pub merge_log_cleaned: u64,
    pub raw_records_deleted: u64,
    pub export_targets: Vec<String>,
}

/// What an erase removes, fixed before anything is removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Plan {
    members: Vec<String>,
    /// (entity type, field, value) identity keys of the members.
    keys: Vec<(String, String, String)>,
    /// The entity outside the cascade the root was merged into: its events stay its winner's.
    merged_into: Option<String>,
    /// Ledger sequences mapped to a member, and what their `event_entities` rows become.
    assignments: BTreeMap<i64, Vec<(String, String)>>,
    result: EraseResult,
}

pub async fn run(global: &Global, args: &EraseArgs) -> Result<i32> {
    let ctx = Context::open(global, "erase", args.as_of).await?;
    let outcome = erase(&ctx, global, args).await;
    let (plan, outcome) = match outcome {
        Ok((plan, result)) => (Some(plan), Ok(result)),
        Err(e) => (None, Err(e)),
    };
    // The run log keeps the result with the erased ids replaced (§12.1 step 9).
    let logged = plan.map(|p| {
        let mut r = p.result.clone();
        r.entity_id = "[ERASED]".into();
        r
    });
    ctx.conclude_logged(outcome, logged.as_ref()).await?;
    Ok(0)
}

async fn erase(ctx: &Context, global: &Global, args: &EraseArgs) -> Result<(Plan, EraseResult)> {
    ctx.lease(GLOBAL_LEASE).await?;
    for key in ctx.catalog.build_state_keys().await? {
        ctx.lease(&build_lease(&key)).await?;
    }
    let id = args.entity_id.as_str();
    let mut plan = match ctx.catalog.erasure(id).await? {
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| Error::Storage(format!("Reading the erase plan failed: {e}")))?,
        None => {
            crate::jobs::normalize::normalize_pending(ctx).await?;
            crate::jobs::resolve::resolve_step(ctx, &ctx.hashes, false).await?;
            let plan = match plan(ctx, id).await {
                // Nothing of it is left; a finished erase may still owe its clean-up.
                Err(Error::NotFound(m)) => {
                    ctx.catalog.reclaim(&[]).await?;
                    return Err(Error::NotFound(m));
                }
                other => other?,
            };
            ctx.catalog
                .put_erasure(id, &serde_json::to_string(&plan).expect("plan serializes"))
                .await?;
            crash_point("erase-after-plan");
            plan
        }
    };
    let rows = ctx.catalog.versions().await?;
    let versions: Vec<Definitions> = rows
        .iter()
        .map(|row| version_definitions(ctx, row))
        .collect::<Result<_>>()?;
    let erased = ErasedValues::new(plan.keys.iter().cloned(), &versions, ctx.as_of);
    let members: BTreeSet<&str> = plan.members.iter().map(String::as_str).collect();
    let member_list = sql_list(&members.iter().copied().collect::<Vec<_>>());
    let mut changed_tables: Vec<String> = Vec::new();

    // Ledger: assignments, then events and raw records with no assignment left, then raw
    // records and dead letters that hold the erased values.
    let sequences: Vec<i64> = plan.assignments.keys().copied().collect();
    if !sequences.is_empty() {
        let seq_list = sequences
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let predicate = format!("sequence IN ({seq_list})");
        let rows: Vec<(i64, String, String)> = plan
            .assignments
            .iter()
            .flat_map(|(s, rows)| rows.iter().map(|(t, e)| (*s, t.clone(), e.clone())))
            .collect();
        ctx.lake
            .replace_where(
                tables::ASSIGNMENTS,
                &predicate,
                vec![crate::ledger::assignments_batch(&rows)?],
            )
            .await?;
        crash_point("erase-after-assignments");
        let surviving: BTreeSet<i64> = plan
            .assignments
            .iter()
            .filter(|(_, rows)| !rows.is_empty())
            .map(|(s, _)| *s)
            .collect();
        let events = ctx
            .lake
            .read_where(tables::EVENTS, &EVENTS_SCHEMA, &predicate)
            .await?;
        let kept = keep_rows(
            &EVENTS_SCHEMA,
            &events,
            |b, i| Ok(surviving.contains(&seq(b, i)?)),
            &["data", "resolution_hints"],
            &erased,
        )?;
        ctx.lake
            .replace_where(tables::EVENTS, &predicate, kept)
            .await?;
        changed_tables.push(tables::EVENTS.into());
        // What redacted rows keep (their first hints) goes or is scrubbed with them.
        if ctx.lake.open(tables::REDACTIONS).await?.is_some() {
            let rows = ctx
                .lake
                .read_where(tables::REDACTIONS, &REDACTIONS_SCHEMA, &predicate)
                .await?;
            let kept = keep_rows(
                &REDACTIONS_SCHEMA,
                &rows,
                |b, i| Ok(surviving.contains(&seq(b, i)?)),
                &["kept"],
                &erased,
            )?;
            ctx.lake
                .replace_where(tables::REDACTIONS, &predicate, kept)
                .await?;
            changed_tables.push(tables::REDACTIONS.into());
        }
    }
    changed_tables.push(tables::ASSIGNMENTS.into());
    // Raw records: those of the sequences above, and those without a ledger row (failed,
    // duplicate, excluded) whose JSON holds an erased value.
    let unlinked = format!(
        "sequence NOT IN (SELECT sequence FROM e){}",
        if sequences.is_empty() {
            String::new()
        } else {
            format!(
                " OR sequence IN ({})",
                sequences
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    let raw = ctx
        .lake
        .query_all(
            &[
                ("t", tables::RAW, RAW_SCHEMA.clone()),
                ("e", tables::EVENTS, EVENTS_SCHEMA.clone()),
            ],
            &format!("SELECT * FROM t WHERE {unlinked}"),
        )
        .await?;
    let mut doomed: BTreeSet<i64> = BTreeSet::new();
    let mut touched: BTreeSet<i64> = BTreeSet::new();
    for b in &raw {
        let text = Columns::new(b).str("raw")?;
        for i in 0..b.num_rows() {
            let s = seq(b, i)?;
            let linked = plan.assignments.get(&s);
            let json: Json = serde_json::from_str(text.value(i)).unwrap_or(Json::Null);
            match linked {
                Some(rows) if rows.is_empty() => {
                    doomed.insert(s);
                }
                Some(_) => {
                    touched.insert(s);
                }
                None if erased.found_in(&json) => {
                    doomed.insert(s);
                    plan.result.raw_records_deleted += 1;
                }
                None => {}
            }
        }
    }
    if !doomed.is_empty() || !touched.is_empty() {
        let all: Vec<String> = doomed.union(&touched).map(i64::to_string).collect();
        let predicate = format!("sequence IN ({})", all.join(", "));
        let rows = ctx
            .lake
            .read_where(tables::RAW, &RAW_SCHEMA, &predicate)
            .await?;
        let kept = keep_rows(
            &RAW_SCHEMA,
            &rows,
            |b, i| Ok(!doomed.contains(&seq(b, i)?)),
            &["raw"],
            &erased,
        )?;
        ctx.lake
            .replace_where(tables::RAW, &predicate, kept)
            .await?;
    }
    changed_tables.push(tables::RAW.into());
    erase_dead_letters(ctx, &members, &erased).await?;
    changed_tables.push(tables::DEAD_LETTERS.into());
    crash_point("erase-after-ledger");

    // History of every version, and the warehouse tables exported from it.
    for (row, defs) in rows.iter().zip(&versions) {
        let version = &row.version;
        for e in defs.entities.values() {
            let table = tables::history(version, &e.name);
            ctx.lake
                .delete_where(&table, &format!("\"{}_id\" IN ({member_list})", e.name))
                .await?;
            changed_tables.push(table);
        }
        for rel in relationship_types(defs) {
            let table = tables::relationship_history(version, &rel);
            ctx.lake
                .delete_where(
                    &table,
                    &format!("source_id IN ({member_list}) OR target_id IN ({member_list})"),
                )
                .await?;
            changed_tables.push(table);
        }
    }
    let database = global
        .database
        .clone()
        .unwrap_or_else(|| default_database(&ctx.config));
    let mut warehouse_tables = Vec::new();
    for (target, table) in ctx.catalog.export_tables().await? {
        let Some(location) = target.strip_prefix("warehouse:") else {
            continue;
        };
        let wh = Warehouse::at(&ctx.catalog, &database, location);
        let predicate = if table.starts_with("rel_") {
            format!("source_id IN ({member_list}) OR target_id IN ({member_list})")
        } else {
            format!(
                "\"{}_id\" IN ({member_list})",
                table.trim_end_matches("_history")
            )
        };
        wh.delete_where(&table, &predicate).await?;
        warehouse_tables.push(wh.t(&table));
    }

    crash_point("erase-after-history");
    // The catalog, in one transaction, then the physical clean-up everywhere.
    let scrub = |text: &str| rewrite_run_log(text, &members, &erased);
    plan.result.merge_log_cleaned += ctx.catalog.erase_entities(&plan.members, &scrub).await?;
    // A re-run after a crash starts from the stored plan with the count found so far.
    ctx.catalog
        .put_erasure(id, &serde_json::to_string(&plan).expect("plan serializes"))
        .await?;
    crash_point("erase-after-catalog");
    changed_tables.sort();
    changed_tables.dedup();
    for (i, table) in changed_tables.iter().enumerate() {
        ctx.lake.purge(table).await?;
        ctx.renew_leases().await?;
        if i == 0 {
            crash_point("erase-during-purge");
        }
    }
    ctx.catalog.drop_erasure(id).await?;
    ctx.catalog.reclaim(&warehouse_tables).await?;
    plan.result.export_targets = export_targets(ctx).await?;
    Ok((plan.clone(), plan.result))
}

/// The erase's plan: cascade, keys and sequences (the catch-up has run).
async fn plan(ctx: &Context, id: &str) -> Result<Plan> {
    let store = ctx.catalog.load_identity().await?;
    let mut resolver = ctx.resolver(store);
    let erasure = resolver.erase(id);
    let members: BTreeSet<&str> = erasure.members.iter().map(String::as_str).collect();
    let assignments = ctx
        .lake
        .query_map(
            &[("a", tables::ASSIGNMENTS, ASSIGNMENTS_SCHEMA.clone())],
            "SELECT * FROM a",
            crate::ledger::read_assignments,
        )
        .await?;
    let winner = erasure
        .merged_into
        .clone()
        .filter(|w| !members.contains(w.as_str()));
    let mut by_sequence: BTreeMap<i64, Vec<(String, String)>> = BTreeMap::new();
    for (s, _, e) in &assignments {
        if members.contains(e.as_str()) {
            by_sequence.entry(*s).or_default();
        }
    }
    for (s, t, e) in &assignments {
        if let Some(rows) = by_sequence.get_mut(s) {
            let row = match (members.contains(e.as_str()), &winner) {
                (false, _) => Some((t.clone(), e.clone())),
                (true, Some(w)) => Some((t.clone(), w.clone())),
                (true, None) => None,
            };
            if let Some(row) = row.filter(|r| !rows.contains(r)) {
                rows.push(row);
            }
        }
    }
    let known = !erasure.keys.is_empty()
        || !by_sequence.is_empty()
        || crate::jobs::inspect::entity_type_of(ctx, id)
            .await?
            .is_some()
        || erasure.members.len() > 1;
    if !known {
        return Err(Error::NotFound(format!("Unknown entity '{id}'")));
    }
    let events_deleted = by_sequence.values().filter(|r| r.is_empty()).count() as u64;
    Ok(Plan {
        result: EraseResult {
            entity_id: id.to_string(),
            entities_erased: erasure.members.len() as u64,
            events_deleted,
            ..Default::default()
        },
        keys: erasure
            .keys
            .iter()
            .map(|k| (k.entity_type.clone(), k.field.clone(), k.value.clone()))
            .collect(),
        members: erasure.members,
        merged_into: winner,
        assignments: by_sequence,
    })
}

fn seq(b: &RecordBatch, i: usize) -> Result<i64> {
    Ok(Columns::new(b).i64("sequence")?.value(i))
}

/// The rows `keep` accepts, with the JSON text columns `scrub` scrubbed of erased values.
fn keep_rows(
    schema: &deltalake::arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
    mut keep: impl FnMut(&RecordBatch, usize) -> Result<bool>,
    scrub: &[&str],
    erased: &ErasedValues,
) -> Result<Vec<RecordBatch>> {
    let failed = |e: deltalake::arrow::error::ArrowError| {
        Error::Storage(format!("Rewriting rows failed: {e}"))
    };
    let mut out = Vec::new();
    for b in batches {
        let mask = (0..b.num_rows())
            .map(|i| keep(b, i).map(Some))
            .collect::<Result<BooleanArray>>()?;
        let kept = filter_record_batch(b, &mask).map_err(failed)?;
        let mut columns: Vec<ArrayRef> = kept.columns().to_vec();
        for name in scrub {
            let i = kept.schema().index_of(name).map_err(failed)?;
            let column = Columns::new(&kept).str(name)?;
            let values: StringArray = (0..kept.num_rows())
                .map(|r| {
                    column
                        .get(r)
                        .map(|v| erased.scrub_text(v).unwrap_or_else(|| v.to_string()))
                })
                .collect();
            columns[i] = Arc::new(values);
        }
        out.push(RecordBatch::try_new(kept.schema(), columns).map_err(failed)?);
    }
    if out.is_empty() {
        // A commit that only removes rows still needs its schema.
        out.push(RecordBatch::new_empty(schema.clone()));
    }
    Ok(out)
}

/// Dead letters of a member, or whose raw JSON holds an erased value, are deleted — in the
/// Delta table and in a file sink.
async fn erase_dead_letters(
    ctx: &Context,
    members: &BTreeSet<&str>,
    erased: &ErasedValues<'_>,
) -> Result<()> {
    let doomed = |raw: &str, entity: Option<&str>| {
        entity.is_some_and(|e| members.contains(e))
            || serde_json::from_str::<Json>(raw).is_ok_and(|j| erased.found_in(&j))
    };
    let letters = ctx
        .lake
        .read_where(tables::DEAD_LETTERS, &DEAD_LETTERS_SCHEMA, "TRUE")
        .await?;
    let mut dropped = 0;
    let kept = keep_rows(
        &DEAD_LETTERS_SCHEMA,
        &letters,
        |b, i| {
            let c = Columns::new(b);
            let gone = doomed(c.str("raw")?.value(i), c.str("entity_id")?.get(i));
            dropped += gone as usize;
            Ok(!gone)
        },
        &[],
        erased,
    )?;
    if dropped > 0 {
        ctx.lake.overwrite(tables::DEAD_LETTERS, kept).await?;
    }
    if let DeadLetterSink::File(path) = &ctx.dead_letter {
        if let Ok(text) = std::fs::read_to_string(path) {
            let kept: Vec<&str> = text
                .lines()
                .filter(|line| {
                    let j: Json = serde_json::from_str(line).unwrap_or(Json::Null);
                    let raw = j.get("raw").map(|r| r.to_string()).unwrap_or_default();
                    !doomed(&raw, j.get("entity_id").and_then(Json::as_str))
                })
                .collect();
            if kept.len() != text.lines().count() {
                let tmp = path.with_extension("erase.tmp");
                let body: String = kept.iter().map(|l| format!("{l}\n")).collect();
                std::fs::write(&tmp, body)?;
                std::fs::rename(&tmp, path)?;
            }
        }
    }
    Ok(())
}

/// A run-log result text without the erased entities (§12.1 step 9): failures about them go,
/// other mentions of their ids or erased values become `"[ERASED]"`. `None` when unchanged.
fn rewrite_run_log(text: &str, members: &BTreeSet<&str>, erased: &ErasedValues) -> Option<String> {
    let json: Json = serde_json::from_str(text).ok()?;
    let mentions = |s: &str| {
        members.iter().any(|m| s.contains(m))
            || erased.all().any(|v| s.contains(v.as_str()))
            || erased.matches(s)
    };
    fn walk(j: &Json, drop: &dyn Fn(&Json) -> bool, mentions: &dyn Fn(&str) -> bool) -> Json {
        match j {
            Json::Array(items) => Json::Array(
                items
                    .iter()
                    .filter(|i| !drop(i))
                    .map(|i| walk(i, drop, mentions))
                    .collect(),
            ),
            Json::Object(map) => Json::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), walk(v, drop, mentions)))
                    .collect(),
            ),
            Json::String(s) if mentions(s) => Json::String("[ERASED]".into()),
            other => other.clone(),
        }
    }
    let drop = |j: &Json| {
        j.get("stage").is_some()
            && (j
                .get("entity_id")
                .and_then(Json::as_str)
                .is_some_and(|e| members.contains(e))
                || j.get("raw").is_some_and(|r| erased.found_in(r)))
    };
    let new = walk(&json, &drop, &mentions);
    (new != json).then(|| new.to_string())
}

/// The places earlier exports wrote files or tables to outside the catalog database.
async fn export_targets(ctx: &Context) -> Result<Vec<String>> {
    let mut out = BTreeSet::new();
    for text in ctx.catalog.run_results("export").await? {
        let j: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
        if j["format"] != "warehouse" {
            if let Some(d) = j["destination"].as_str() {
                out.insert(d.to_string());
            }
        }
    }
    Ok(out.into_iter().collect())
}
