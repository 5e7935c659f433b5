//! `defacto identity …` and `defacto ledger …`: the seed's `d.identity` and `d.ledger`
//! inspection (RESULTS.md §8). Read-only; they process nothing.

use clap::{Args, Subcommand, ValueEnum};
use defacto_core::identity::IdentityStore;
use defacto_core::replay::LedgerEvent;
use defacto_core::value::timestamp_text;
use serde_json::{json, Value as Json};

use crate::cli::Global;
use crate::context::Context;
use crate::error::Result;
use crate::history_table::sql_list;
use crate::jobs::build::{assignments_of, ledger_rows};
use crate::lake::tables;
use crate::ledger::{Columns, ASSIGNMENTS_SCHEMA, EVENTS_SCHEMA};
use crate::output;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub struct IdentityArgs {
    #[command(subcommand)]
    pub command: IdentityCommand,
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// The entity a hint value belongs to (smallest entity type, then field, when several).
    Lookup { value: String },
    /// The hints of an entity: field → values.
    Hints { entity_id: String },
    /// Every identity mapping.
    List {
        #[arg(long)]
        entity: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct LedgerArgs {
    #[command(subcommand)]
    pub command: LedgerCommand,
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// The number of ledger rows (normalized events), optionally of one source.
    Count {
        #[arg(long)]
        source: Option<String>,
    },
    /// The events of an entity (and of the entities merged into it), in canonical order.
    Events { entity_id: String },
}

pub async fn identity(global: &Global, args: &IdentityArgs) -> Result<i32> {
    let ctx = Context::open(global, "identity", None).await?;
    let store = ctx.catalog.load_identity().await?;
    let resolver = ctx.resolver(store);
    let value = match &args.command {
        IdentityCommand::Lookup { value } => json!({ "entity_id": resolver.lookup(value) }),
        IdentityCommand::Hints { entity_id } => json!(resolver.hints(entity_id)),
        IdentityCommand::List { entity } => {
            let rows: Vec<Json> = resolver
                .store()
                .mappings()
                .filter(|(k, _)| entity.as_ref().is_none_or(|e| &k.entity_type == e))
                .map(|(k, id)| {
                    json!({"entity_type": k.entity_type, "hint_type": k.field, "hint_value": k.value, "entity_id": id})
                })
                .collect();
            Json::Array(rows)
        }
    };
    print(global, &value, args.format)
}

pub async fn ledger(global: &Global, args: &LedgerArgs) -> Result<i32> {
    let ctx = Context::open(global, "ledger", None).await?;
    let value = match &args.command {
        LedgerCommand::Count { source } => {
            let filter = source
                .as_ref()
                .map(|s| format!(" WHERE source = '{}'", s.replace('\'', "''")))
                .unwrap_or_default();
            let batches = ctx
                .lake
                .query_all(
                    &[("events", tables::EVENTS, EVENTS_SCHEMA.clone())],
                    &format!("SELECT COUNT(*) AS n FROM events{filter}"),
                )
                .await?;
            let n = batches
                .first()
                .filter(|b| b.num_rows() > 0)
                .map(|b| Columns::new(b).i64("n").map(|c| c.value(0)))
                .transpose()?
                .unwrap_or(0);
            json!({ "count": n })
        }
        LedgerCommand::Events { entity_id } => Json::Array(
            entity_events(&ctx, entity_id)
                .await?
                .into_iter()
                .map(|e| {
                    json!({
                        "sequence": e.sequence,
                        "event_id": e.event_id,
                        "event_type": e.event_type,
                        "timestamp": timestamp_text(&e.timestamp),
                    })
                })
                .collect(),
        ),
    };
    print(global, &value, args.format)
}

fn print(global: &Global, value: &Json, format: Format) -> Result<i32> {
    output::write_result_file(global.result_file.as_deref(), value)?;
    let text = match format {
        Format::Json => output::to_json(value),
        Format::Csv => records_csv(value),
        Format::Table => records_table(value),
    };
    output::print(&text)?;
    Ok(0)
}

/// Rows of a result: an array of objects, or one object as a one-row table.
fn records(value: &Json) -> (Vec<String>, Vec<Vec<String>>) {
    let rows: Vec<&serde_json::Map<String, Json>> = match value {
        Json::Array(items) => items.iter().filter_map(Json::as_object).collect(),
        Json::Object(m) => vec![m],
        _ => Vec::new(),
    };
    let mut columns: Vec<String> = Vec::new();
    for r in &rows {
        for k in r.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let cell = |v: Option<&Json>| match v {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let body = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(r.get(c))).collect())
        .collect();
    (columns, body)
}

fn records_csv(value: &Json) -> String {
    let (columns, rows) = records(value);
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(&columns);
    for r in rows {
        let _ = w.write_record(&r);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

fn records_table(value: &Json) -> String {
    let (columns, rows) = records(value);
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    let mut out = line(&columns);
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

/// The ledger events of an entity and of the entities merged into it, in canonical order.
pub async fn entity_events(ctx: &Context, entity_id: &str) -> Result<Vec<LedgerEvent>> {
    let store = ctx.catalog.load_identity().await?;
    let mut ids = vec![entity_id.to_string()];
    let mut i = 0;
    while i < ids.len() {
        ids.extend(store.merged_from(&ids[i]));
        i += 1;
    }
    // Only this entity's rows: its assignments, then its events by sequence.
    let ids: std::collections::BTreeSet<String> = ids.into_iter().collect();
    let seqs: std::collections::BTreeSet<i64> = assignments_of(ctx, &ids)
        .await?
        .into_values()
        .flatten()
        .collect();
    let mut events = ledger_rows(ctx, &seqs).await?;
    events.sort_by_key(LedgerEvent::order_key);
    Ok(events)
}

/// The entity type that knows an id (through `ledger/assignments`), if any.
pub async fn entity_type_of(ctx: &Context, entity_id: &str) -> Result<Option<String>> {
    let batches = ctx
        .lake
        .query_all(
            &[("a", tables::ASSIGNMENTS, ASSIGNMENTS_SCHEMA.clone())],
            &format!(
                "SELECT DISTINCT entity_type FROM a WHERE entity_id = {} ORDER BY entity_type LIMIT 1",
                sql_list(&[entity_id])
            ),
        )
        .await?;
    match batches.iter().find(|b| b.num_rows() > 0) {
        Some(batch) => Ok(Some(
            Columns::new(batch).str("entity_type")?.value(0).to_string(),
        )),
        None => Ok(None),
    }
}
