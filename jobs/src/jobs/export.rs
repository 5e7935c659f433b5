//! `defacto export --format warehouse|parquet|csv|delta|graph-json [--out URL]`: the history
//! tables of a definition version (the active one by default) where analysts and downstream
//! pipelines read them.
//!
//! * `warehouse`: `{entity}_history` / `rel_{type}_history` tables and a view of current rows
//!   per table in the catalog database (see `warehouse.rs`). Incremental: only the entities
//!   whose rows changed since the last export are reloaded, found by diffing the Delta table
//!   against the version exported last time; `--full` reloads everything.
//! * `parquet`, `csv`: one file per entity type and relationship type under `--out` (a local
//!   folder or `s3://…`), current rows or `--history`, sorted by id then `valid_from`. Files
//!   are written under temporary names and renamed into place once all are written, so a
//!   failed export leaves the previous files as they were.
//! * `delta`: the same tables as Delta tables under another lake root.
//! * `graph-json`: `graph.json` with `{nodes, edges}` of current state (D3, Cytoscape).

use std::sync::Arc;
use std::time::Instant as Clock;

use clap::{Args, ValueEnum};
use defacto_core::definitions::Definitions;
use deltalake::arrow::array::{RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::datafusion::datasource::MemTable;
use deltalake::logstore::object_store::buffered::BufWriter;
use deltalake::logstore::object_store::path::Path as StorePath;
use deltalake::logstore::object_store::{ObjectStore, ObjectStoreExt};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::cli::Global;
use crate::context::{default_database, Context};
use crate::error::{Error, Result};
use crate::history_table::{entity_schema, relationship_schema, relationship_types};
use crate::lake::{tables, Lake};
use crate::parquet_output::write_sorted_parquet;
use crate::warehouse::{Batches, TableSpec, Warehouse};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Warehouse,
    Parquet,
    Csv,
    Delta,
    GraphJson,
}

impl ExportFormat {
    fn name(self) -> &'static str {
        match self {
            ExportFormat::Warehouse => "warehouse",
            ExportFormat::Parquet => "parquet",
            ExportFormat::Csv => "csv",
            ExportFormat::Delta => "delta",
            ExportFormat::GraphJson => "graph-json",
        }
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Where files go: a local folder or a URL (`s3://bucket/prefix`). Not used by `warehouse`,
    /// which writes to the catalog database.
    #[arg(long)]
    pub out: Option<String>,
    /// Every history row instead of the current rows (files and Delta; the warehouse always
    /// holds the history and a current-state view).
    #[arg(long)]
    pub history: bool,
    /// Only these entity types (and the relationships they declare). Repeatable.
    #[arg(long = "entity")]
    pub entities: Vec<String>,
    /// The definition version to export; default: the active one.
    #[arg(long)]
    pub version: Option<String>,
    /// Warehouse: reload every table instead of only the entities that changed.
    #[arg(long)]
    pub full: bool,
}

/// One exported table.
#[derive(Debug, Clone, Serialize)]
pub struct TableExport {
    pub table: String,
    /// Where it went: a file URL, a Delta table URL or a warehouse table.
    pub location: String,
    /// `full`, `incremental` or `unchanged`.
    pub mode: &'static str,
    pub rows: u64,
    pub bytes: u64,
}

/// The result JSON of an export.
#[derive(Debug, Clone, Serialize)]
pub struct ExportResult {
    pub format: &'static str,
    pub version: String,
    pub destination: String,
    pub tables: Vec<TableExport>,
    pub rows_written: u64,
    pub bytes_written: u64,
    pub duration_ms: u64,
}

/// A history table of the lake and what it is called outside.
struct Source {
    /// `customer` or `rel_places`: the current-state name; `{base}_history` is the history.
    base: String,
    lake_table: String,
    schema: SchemaRef,
    id_column: String,
    key: Vec<String>,
    entity: Option<String>,
}

impl Source {
    fn name(&self, history: bool) -> String {
        if history {
            format!("{}_history", self.base)
        } else {
            self.base.clone()
        }
    }

    fn order(&self) -> String {
        self.key
            .iter()
            .map(|k| format!("\"{k}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Files get their rows sorted by key; a warehouse table does not need it.
    fn select(&self, from: &str, history: bool, sorted: bool) -> String {
        let filter = if history {
            ""
        } else {
            " WHERE valid_to IS NULL"
        };
        let order = if sorted {
            format!(" ORDER BY {}", self.order())
        } else {
            String::new()
        };
        format!("SELECT * FROM {from}{filter}{order}")
    }
}

fn sources(defs: &Definitions, version: &str, selected: &[String]) -> Result<Vec<Source>> {
    for name in selected {
        if !defs.entities.contains_key(name) {
            return Err(Error::NotFound(format!(
                "Unknown entity type '{name}'. Available entity types: [{}]",
                defs.entities.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let wanted = |entity: &str| selected.is_empty() || selected.iter().any(|s| s == entity);
    let mut out = Vec::new();
    for e in defs.entities.values().filter(|e| wanted(&e.name)) {
        let id = format!("{}_id", e.name);
        out.push(Source {
            base: e.name.clone(),
            lake_table: tables::history(version, &e.name),
            schema: entity_schema(e),
            key: vec![id.clone(), "valid_from".into()],
            id_column: id,
            entity: Some(e.name.clone()),
        });
    }
    for rel in relationship_types(defs) {
        let declared_by_selected = defs
            .entities
            .values()
            .any(|e| wanted(&e.name) && e.relationships.iter().any(|r| r.relationship == rel));
        if declared_by_selected {
            out.push(Source {
                base: format!("rel_{rel}"),
                lake_table: tables::relationship_history(version, &rel),
                schema: relationship_schema(defs, &rel),
                id_column: "source_id".into(),
                key: ["source_id", "relationship_type", "target_id", "valid_from"]
                    .map(String::from)
                    .to_vec(),
                entity: None,
            });
        }
    }
    Ok(out)
}

async fn read(lake: &Lake, source: &Source, history: bool) -> Result<Batches<'static>> {
    read_rows(lake, source, history, true).await
}

async fn read_rows(
    lake: &Lake,
    source: &Source,
    history: bool,
    sorted: bool,
) -> Result<Batches<'static>> {
    let stream = lake
        .query(
            &[("h", &source.lake_table, source.schema.clone())],
            &source.select("h", history, sorted),
        )
        .await?;
    Ok(conformed(stream, source))
}

/// The query's batches in the table's declared schema (DataFusion hands strings back as
/// views; writers and loaders get the declared types).
fn conformed(
    stream: deltalake::datafusion::execution::SendableRecordBatchStream,
    source: &Source,
) -> Batches<'static> {
    let table = source.lake_table.clone();
    let schema = source.schema.clone();
    stream
        .map(move |batch| {
            let batch =
                batch.map_err(|e| Error::Storage(format!("Reading table {table} failed: {e}")))?;
            crate::lake::conform(&batch, &schema)
        })
        .boxed()
}

pub async fn run(global: &Global, args: &ExportArgs) -> Result<i32> {
    let ctx = Context::open(global, "export", None).await?;
    ctx.conclude(export(&ctx, global, args).await).await?;
    Ok(0)
}

async fn export(ctx: &Context, global: &Global, args: &ExportArgs) -> Result<ExportResult> {
    let clock = Clock::now();
    let (row, defs) = match &args.version {
        None => ctx.active_definitions().await?,
        Some(v) => {
            let row = ctx
                .catalog
                .version(v)
                .await?
                .ok_or_else(|| Error::NotFound(format!("Unknown definition version '{v}'")))?;
            let defs = crate::jobs::build::version_definitions(ctx, &row)?;
            (row, defs)
        }
    };
    let sources = sources(&defs, &row.version, &args.entities)?;
    let (destination, tables) = match args.format {
        ExportFormat::Warehouse => {
            if args.out.is_some() {
                return Err(Error::Config(
                    "--out is not used by --format warehouse: the warehouse is the catalog database (--database)".into(),
                ));
            }
            let url = global
                .database
                .clone()
                .unwrap_or_else(|| default_database(&ctx.config));
            let wh = Warehouse::new(&ctx.catalog, &url, &global.namespace, &row.version);
            ctx.lease(&format!("export:warehouse:{}", wh.location()))
                .await?;
            let tables = to_warehouse(ctx, &wh, &sources, args.full).await?;
            (wh.location().to_string(), tables)
        }
        format => {
            let out = args.out.as_deref().ok_or_else(|| {
                Error::Config(format!("--format {} needs --out URL", format.name()))
            })?;
            if format == ExportFormat::GraphJson && args.history {
                return Err(Error::Config(
                    "--format graph-json exports current state; --history does not apply".into(),
                ));
            }
            let tables = match format {
                ExportFormat::Delta => to_delta(ctx, out, &sources, args.history).await?,
                ExportFormat::GraphJson => to_graph(ctx, out, &sources).await?,
                _ => to_files(ctx, out, &sources, format, args.history).await?,
            };
            (out.to_string(), tables)
        }
    };
    Ok(ExportResult {
        format: args.format.name(),
        version: row.version,
        destination,
        rows_written: tables.iter().map(|t| t.rows).sum(),
        bytes_written: tables.iter().map(|t| t.bytes).sum(),
        tables,
        duration_ms: clock.elapsed().as_millis() as u64,
    })
}

// ---- warehouse ----------------------------------------------------------------------------

async fn to_warehouse(
    ctx: &Context,
    wh: &Warehouse,
    sources: &[Source],
    full: bool,
) -> Result<Vec<TableExport>> {
    wh.ensure_schema().await?;
    let target = format!("warehouse:{}", wh.location());
    futures::stream::iter(
        sources
            .iter()
            .map(|source| warehouse_table(ctx, wh, source, full, &target)),
    )
    .buffered(wh.parallel_loads())
    .try_collect()
    .await
}

/// Loads one history table into the warehouse: unchanged, the changed entities' rows, or all.
async fn warehouse_table(
    ctx: &Context,
    wh: &Warehouse,
    source: &Source,
    full: bool,
    target: &str,
) -> Result<TableExport> {
    let spec = TableSpec {
        name: source.name(true),
        schema: source.schema.clone(),
        id_column: source.id_column.clone(),
        key: source.key.clone(),
        view: source.base.clone(),
    };
    // A table that no build has written yet is exported empty, as version -1.
    let now = ctx.lake.version(&source.lake_table).await?.unwrap_or(-1);
    let last = match full || !wh.exists(&spec.name).await? {
        true => None,
        false => ctx.catalog.export_version(target, &spec.name).await?,
    };
    let (mode, rows, bytes) = match last {
        Some(last) if last == now => ("unchanged", 0, 0),
        Some(last) if last >= 0 => match changed_rows(&ctx.lake, source, last).await? {
            Some((ids, batches)) if ids.is_empty() => {
                drop(batches);
                ("unchanged", 0, 0)
            }
            Some((ids, batches)) => {
                let (rows, bytes) = wh.load_changed(&spec, &ids, batches).await?;
                ("incremental", rows, bytes)
            }
            None => full_load(ctx, wh, &spec, source).await?,
        },
        _ => full_load(ctx, wh, &spec, source).await?,
    };
    ctx.catalog
        .set_export_version(target, &spec.name, now)
        .await?;
    Ok(TableExport {
        location: wh.t(&spec.name),
        table: spec.name,
        mode,
        rows,
        bytes,
    })
}

async fn full_load(
    ctx: &Context,
    wh: &Warehouse,
    spec: &TableSpec,
    source: &Source,
) -> Result<(&'static str, u64, u64)> {
    let batches = read_rows(&ctx.lake, source, true, false).await?;
    let (rows, bytes) = wh.load_full(spec, batches).await?;
    Ok(("full", rows, bytes))
}

/// The ids whose rows differ between Delta version `since` of the source and its latest
/// version (rows added, changed or gone), and the latest rows of those ids. `None` when the
/// old version cannot be read any more (vacuumed): the caller reloads everything.
async fn changed_rows(
    lake: &Lake,
    source: &Source,
    since: i64,
) -> Result<Option<(Vec<String>, Batches<'static>)>> {
    let session = lake.session(&[]).await?;
    let table = &source.lake_table;
    lake.register(&session, "new_rows", table, &source.schema, None)
        .await?;
    if lake
        .register(&session, "old_rows", table, &source.schema, Some(since))
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let id = format!("\"{}\"", source.id_column);
    let diff = format!(
        "SELECT DISTINCT id FROM (
           SELECT {id} AS id FROM (SELECT * FROM new_rows EXCEPT SELECT * FROM old_rows)
           UNION ALL
           SELECT {id} AS id FROM (SELECT * FROM old_rows EXCEPT SELECT * FROM new_rows)
         ) ORDER BY id"
    );
    let query_failed = |e: deltalake::datafusion::error::DataFusionError| {
        Error::Storage(format!("Diffing table {table} failed: {e}"))
    };
    let batches = session
        .sql(&diff)
        .await
        .map_err(query_failed)?
        .collect()
        .await
        .map_err(query_failed)?;
    let mut ids = Vec::new();
    for b in &batches {
        let column = crate::ledger::Columns::new(b).str("id")?;
        ids.extend((0..b.num_rows()).map(|i| column.value(i).to_string()));
    }
    let id_schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
    let id_batch = RecordBatch::try_new(
        id_schema.clone(),
        vec![Arc::new(StringArray::from_iter_values(ids.iter()))],
    )
    .map_err(|e| Error::Storage(format!("Diffing table {table} failed: {e}")))?;
    let changed = MemTable::try_new(id_schema, vec![vec![id_batch]])
        .map_err(|e| Error::Storage(format!("Diffing table {table} failed: {e}")))?;
    session
        .register_table("changed_ids", Arc::new(changed))
        .map_err(query_failed)?;
    let rows = format!("SELECT * FROM new_rows WHERE {id} IN (SELECT id FROM changed_ids)");
    let stream = session
        .sql(&rows)
        .await
        .map_err(query_failed)?
        .execute_stream()
        .await
        .map_err(query_failed)?;
    Ok(Some((ids, conformed(stream, source))))
}

// ---- files --------------------------------------------------------------------------------

/// An object store at the `--out` location (a local folder is created).
fn out_store(out: &str) -> Result<(Arc<dyn ObjectStore>, String)> {
    let failed = |e: &dyn std::fmt::Display| {
        Error::Storage(format!("Opening the export location '{out}' failed: {e}"))
    };
    if !out.contains("://") {
        std::fs::create_dir_all(out).map_err(|e| failed(&e))?;
    }
    let url = deltalake::ensure_table_uri(out).map_err(|e| failed(&e))?;
    let store = deltalake::logstore::store_for(&url, std::iter::empty::<(String, String)>())
        .map_err(|e| failed(&e))?;
    Ok((store, url.to_string().trim_end_matches('/').to_string()))
}

async fn to_files(
    ctx: &Context,
    out: &str,
    sources: &[Source],
    format: ExportFormat,
    history: bool,
) -> Result<Vec<TableExport>> {
    let (store, base) = out_store(out)?;
    let ext = if format == ExportFormat::Csv {
        "csv"
    } else {
        "parquet"
    };
    let staged = uuid::Uuid::new_v4().simple().to_string();
    let mut written: Vec<(StorePath, StorePath)> = Vec::new();
    let mut tables = Vec::new();
    let outcome: Result<()> = async {
        for source in sources {
            let name = source.name(history);
            let file = format!("{name}.{ext}");
            let tmp = StorePath::from(format!(".{file}.{staged}.tmp"));
            written.push((tmp.clone(), StorePath::from(file.as_str())));
            let rows = match format {
                ExportFormat::Csv => {
                    write_csv(&store, &tmp, read(&ctx.lake, source, history).await?).await?
                }
                _ => {
                    // The writer sorts by the key itself, cheaper than the query's ORDER BY.
                    let batches = read_rows(&ctx.lake, source, history, false).await?;
                    write_sorted_parquet(&store, &tmp, &source.schema, batches, &source.key).await?
                }
            };
            let bytes = store
                .head(&tmp)
                .await
                .map_err(|e| Error::Storage(format!("Writing {file} failed: {e}")))?
                .size;
            tables.push(TableExport {
                table: name,
                location: format!("{base}/{file}"),
                mode: "full",
                rows,
                bytes,
            });
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        for (tmp, _) in &written {
            let _ = store.delete(tmp).await;
        }
        return Err(e);
    }
    for (tmp, file) in &written {
        store
            .rename(tmp, file)
            .await
            .map_err(|e| Error::Storage(format!("Writing {file} failed: {e}")))?;
    }
    Ok(tables)
}

/// CSV with a header; timestamps as canonical RFC 3339 text, nulls as empty cells.
async fn write_csv(
    store: &Arc<dyn ObjectStore>,
    path: &StorePath,
    mut batches: Batches<'_>,
) -> Result<u64> {
    let failed = |e: &dyn std::fmt::Display| Error::Storage(format!("Writing {path} failed: {e}"));
    let mut out = BufWriter::new(store.clone(), path.clone());
    let mut rows = 0u64;
    let mut header = true;
    while let Some(batch) = batches.try_next().await? {
        let mut buf = Vec::new();
        crate::output::write_csv(&batch, header, &mut buf).map_err(|e| failed(&e))?;
        header = false;
        rows += batch.num_rows() as u64;
        out.write_all(&buf).await.map_err(|e| failed(&e))?;
    }
    out.shutdown().await.map_err(|e| failed(&e))?;
    Ok(rows)
}

// ---- delta --------------------------------------------------------------------------------

async fn to_delta(
    ctx: &Context,
    out: &str,
    sources: &[Source],
    history: bool,
) -> Result<Vec<TableExport>> {
    let target = Lake::new(out)?;
    let mut tables = Vec::new();
    for source in sources {
        let name = source.name(history);
        let mut batches: Vec<RecordBatch> = read(&ctx.lake, source, history)
            .await?
            .try_collect()
            .await?;
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        let bytes = batches
            .iter()
            .map(|b| b.get_array_memory_size() as u64)
            .sum();
        if batches.is_empty() {
            batches.push(RecordBatch::new_empty(source.schema.clone()));
        }
        target.overwrite(&name, batches).await?;
        tables.push(TableExport {
            location: format!("{}/{name}", target.root()),
            table: name,
            mode: "full",
            rows,
            bytes,
        });
    }
    Ok(tables)
}

// ---- graph JSON ---------------------------------------------------------------------------

async fn to_graph(ctx: &Context, out: &str, sources: &[Source]) -> Result<Vec<TableExport>> {
    use serde_json::{json, Map, Value as Json};
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    for source in sources {
        let batches: Vec<RecordBatch> = read(&ctx.lake, source, false).await?.try_collect().await?;
        let system = [
            "valid_from",
            "valid_to",
            "merged_into",
            "last_event_time",
            "state_entered_time",
            "created_time",
        ];
        let props: Vec<String> = source
            .schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| {
                !system.contains(&n.as_str())
                    && !matches!(n.as_str(), "source_id" | "target_id" | "relationship_type")
                    && Some(n.as_str())
                        != source.entity.as_ref().map(|e| format!("{e}_id")).as_deref()
                    && Some(n.as_str())
                        != source
                            .entity
                            .as_ref()
                            .map(|e| format!("{e}_state"))
                            .as_deref()
            })
            .collect();
        for row in crate::output::json_rows(&batches)? {
            let properties: Map<String, Json> = props
                .iter()
                .map(|p| (p.clone(), row.get(p).cloned().unwrap_or(Json::Null)))
                .collect();
            match &source.entity {
                Some(entity) => nodes.push(json!({
                    "id": row.get(&format!("{entity}_id")),
                    "type": entity,
                    "state": row.get(&format!("{entity}_state")),
                    "properties": properties,
                })),
                None => edges.push(json!({
                    "source": row.get("source_id"),
                    "target": row.get("target_id"),
                    "type": row.get("relationship_type"),
                    "properties": properties,
                })),
            }
        }
    }
    let (rows_nodes, rows_edges) = (nodes.len() as u64, edges.len() as u64);
    let body = serde_json::to_vec_pretty(&json!({ "nodes": nodes, "edges": edges }))
        .expect("graph serializes");
    let (store, base) = out_store(out)?;
    let tmp = StorePath::from(format!(".graph.json.{}.tmp", uuid::Uuid::new_v4().simple()));
    let file = StorePath::from("graph.json");
    let bytes = body.len() as u64;
    let failed =
        |e: &dyn std::fmt::Display| Error::Storage(format!("Writing graph.json failed: {e}"));
    store.put(&tmp, body.into()).await.map_err(|e| failed(&e))?;
    store.rename(&tmp, &file).await.map_err(|e| failed(&e))?;
    Ok(vec![TableExport {
        table: "graph".into(),
        location: format!("{base}/graph.json"),
        mode: "full",
        rows: rows_nodes + rows_edges,
        bytes,
    }])
}
