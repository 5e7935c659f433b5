//! The lake: every Delta table under one root (a local folder or `s3://bucket/prefix`).
//! Object-store settings come from the standard `AWS_*` environment variables, which the
//! `object_store` S3 client reads itself; nothing S3-specific is configured here.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::datafusion::execution::memory_pool::FairSpillPool;
use deltalake::datafusion::execution::runtime_env::RuntimeEnvBuilder;
use deltalake::datafusion::execution::SendableRecordBatchStream;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;

use crate::error::{Error, Result};
pub use crate::table_writer::TableWriter;

/// Memory a query may use for sorting and aggregating before it spills to disk.
const QUERY_MEMORY: usize = 256 << 20;

/// The lake root and the tables under it.
#[derive(Debug, Clone)]
pub struct Lake {
    root: String,
    /// Object-store settings beside the environment's (tests pass the S3 endpoint this way).
    options: HashMap<String, String>,
}

/// Table names relative to the lake root (ARCHITECTURE.md "Data flow").
pub mod tables {
    pub const RAW: &str = "ledger/raw";
    pub const EVENTS: &str = "ledger/events";
    pub const ASSIGNMENTS: &str = "ledger/assignments";
    pub const DEAD_LETTERS: &str = "ledger/dead_letters";
    /// What redacted ledger rows keep across renormalizations (PIPELINE.md §12.2).
    pub const REDACTIONS: &str = "ledger/redactions";

    /// `state/<version>/<entity>_history`.
    pub fn history(version: &str, entity: &str) -> String {
        format!("state/{version}/{entity}_history")
    }

    /// `state/<version>/rel_<type>_history`.
    pub fn relationship_history(version: &str, relationship: &str) -> String {
        format!("state/{version}/rel_{relationship}_history")
    }
}

/// Batches `Lake::query_ahead` converts ahead of its receiver.
const QUERY_AHEAD: usize = 2;

fn storage(op: &str, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("{op} failed: {e}"))
}

impl Lake {
    /// A lake at `root`: a URL (`s3://…`, `file://…`) or a local path.
    pub fn new(root: &str) -> Result<Lake> {
        let root = if root.contains("://") {
            root.trim_end_matches('/').to_string()
        } else {
            let path = std::path::Path::new(root);
            std::fs::create_dir_all(path).map_err(|e| {
                Error::Config(format!("cannot create the lake folder '{root}': {e}"))
            })?;
            let abs = std::fs::canonicalize(path)
                .map_err(|e| Error::Config(format!("cannot use the lake folder '{root}': {e}")))?;
            abs.display().to_string()
        };
        Ok(Lake {
            root,
            options: HashMap::new(),
        })
    }

    /// A lake with explicit object-store settings (`AWS_ENDPOINT_URL`, …).
    pub fn with_options(root: &str, options: HashMap<String, String>) -> Result<Lake> {
        Ok(Lake {
            options,
            ..Lake::new(root)?
        })
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    fn location(&self, table: &str) -> String {
        format!("{}/{table}", self.root)
    }

    pub(crate) async fn handle(&self, table: &str) -> Result<DeltaTable> {
        let url = deltalake::ensure_table_uri(self.location(table))
            .map_err(|e| storage(&format!("Opening table {table}"), e))?;
        DeltaTable::try_from_url_with_storage_options(url, self.options.clone())
            .await
            .map_err(|e| storage(&format!("Opening table {table}"), e))
    }

    /// The table when it exists (has a Delta log), else `None`.
    pub async fn open(&self, table: &str) -> Result<Option<DeltaTable>> {
        let t = self.handle(table).await?;
        Ok(t.version().is_some().then_some(t))
    }

    /// Appends batches in one commit, creating the table on first use.
    pub async fn append(&self, table: &str, batches: Vec<RecordBatch>) -> Result<()> {
        self.write(table, batches, SaveMode::Append, None).await
    }

    /// Replaces the whole table in one commit.
    pub async fn overwrite(&self, table: &str, batches: Vec<RecordBatch>) -> Result<()> {
        self.write(table, batches, SaveMode::Overwrite, None).await
    }

    /// Replaces the rows matching `predicate` (SQL) by `batches` in one commit: the old rows
    /// disappear in the same commit that adds the new ones.
    pub async fn replace_where(
        &self,
        table: &str,
        predicate: &str,
        batches: Vec<RecordBatch>,
    ) -> Result<()> {
        if self.open(table).await?.is_none() {
            return self.append(table, batches).await;
        }
        self.write(
            table,
            batches,
            SaveMode::Overwrite,
            Some(predicate.to_string()),
        )
        .await
    }

    async fn write(
        &self,
        table: &str,
        batches: Vec<RecordBatch>,
        mode: SaveMode,
        predicate: Option<String>,
    ) -> Result<()> {
        // Writers of disjoint rows (the shards of a build) can still race for the same table
        // version; Delta rejects the later commit, which is then retried on the new version.
        let mut attempt = 0;
        loop {
            let t = self.handle(table).await?;
            let mut builder = t.write(batches.clone()).with_save_mode(mode);
            match &predicate {
                Some(p) => builder = builder.with_replace_where(p.clone()),
                // Replacing the whole table may also replace its schema (an export of a newer
                // definition version over an older one).
                None if mode == SaveMode::Overwrite => {
                    builder = builder
                        .with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite)
                }
                None => {}
            }
            match builder.await {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 20 && is_conflict(&e) => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => return Err(storage(&format!("Writing table {table}"), e)),
            }
        }
    }

    /// A DataFusion session with the named tables registered (under the given names); a table
    /// that does not exist yet is registered as an empty table of its schema.
    pub async fn session(&self, tables: &[(&str, &str, SchemaRef)]) -> Result<SessionContext> {
        // The jobs' own scans: their sorts spill to temporary files past `QUERY_MEMORY`
        // instead of growing with the ledger (ordering a large `ledger/raw`, say).
        self.session_within(tables, Some(QUERY_MEMORY)).await
    }

    /// A session for users' SQL (`query`), whose joins DataFusion cannot spill: no memory
    /// limit of its own.
    pub async fn open_session(&self) -> Result<SessionContext> {
        self.session_within(&[], None).await
    }

    async fn session_within(
        &self,
        tables: &[(&str, &str, SchemaRef)],
        memory: Option<usize>,
    ) -> Result<SessionContext> {
        // Strings are read as plain Utf8 (DataFusion's default is string views): the jobs
        // hand rows to writers and loaders in the tables' declared types, and converting every
        // string column of every batch back costs a copy of all the text.
        let config = deltalake::datafusion::prelude::SessionConfig::new().set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        );
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(limit) = memory {
            runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
        }
        let runtime = runtime
            .build_arc()
            .map_err(|e| storage("Preparing a query", e))?;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        for (name, table, schema) in tables {
            self.register(&ctx, name, table, schema, None).await?;
        }
        Ok(ctx)
    }

    /// Registers `table` in `ctx` under `name`: its latest version, or `version` when given
    /// (`None` back when that version cannot be loaded any more, e.g. vacuumed). A table that
    /// does not exist yet is an empty table of `schema`.
    pub async fn register(
        &self,
        ctx: &SessionContext,
        name: &str,
        table: &str,
        schema: &SchemaRef,
        version: Option<i64>,
    ) -> Result<Option<()>> {
        let provider: Arc<dyn deltalake::datafusion::catalog::TableProvider> = match self
            .open(table)
            .await?
        {
            Some(mut t) => {
                if let Some(v) = version {
                    if t.load_version(v as u64).await.is_err() {
                        return Ok(None);
                    }
                }
                t.update_datafusion_session(&ctx.state())
                    .map_err(|e| storage("Preparing a query", e))?;
                t.table_provider()
                    .with_session(Arc::new(ctx.state()))
                    .await
                    .map_err(|e| storage(&format!("Reading table {table}"), e))?
            }
            None => Arc::new(
                deltalake::datafusion::datasource::MemTable::try_new(schema.clone(), vec![vec![]])
                    .map_err(|e| storage("Registering an empty table", e))?,
            ),
        };
        ctx.register_table(name, provider)
            .map_err(|e| storage("Registering a table", e))?;
        Ok(Some(()))
    }

    /// The table's latest version, `None` when it does not exist.
    pub async fn version(&self, table: &str) -> Result<Option<i64>> {
        Ok(self
            .open(table)
            .await?
            .and_then(|t| t.version())
            .map(|v| v as i64))
    }

    /// Deletes the rows matching `predicate` (SQL) by rewriting the files that hold them, in
    /// one commit; returns the rows deleted (0 when the table does not exist).
    pub async fn delete_where(&self, table: &str, predicate: &str) -> Result<u64> {
        let Some(t) = self.open(table).await? else {
            return Ok(0);
        };
        let (_, metrics) = t
            .delete()
            .with_predicate(predicate.to_string())
            .await
            .map_err(|e| storage(&format!("Deleting from {table}"), e))?;
        Ok(metrics.num_deleted_rows.unwrap_or(0) as u64)
    }

    /// Makes earlier deletions physical (PIPELINE.md §12.1, erasure guarantee): vacuums every
    /// file the table no longer references, whatever its age; writes a checkpoint at the latest
    /// version; and removes the log files that predate it (older commits and checkpoints, which
    /// hold removed files' column statistics and the predicates of earlier deletes). Time travel
    /// to earlier versions ends here.
    pub async fn purge(&self, table: &str) -> Result<()> {
        let Some(t) = self.open(table).await? else {
            return Ok(());
        };
        let (t, _) = t
            .vacuum()
            .with_retention_period(chrono::Duration::zero())
            .with_enforce_retention_duration(false)
            .await
            .map_err(|e| storage(&format!("Vacuuming {table}"), e))?;
        deltalake::checkpoints::create_checkpoint(&t, None)
            .await
            .map_err(|e| storage(&format!("Checkpointing {table}"), e))?;
        let Some(version) = t.version() else {
            return Ok(());
        };
        use deltalake::logstore::object_store::ObjectStoreExt;
        let store = t.log_store().object_store(None);
        let log = deltalake::Path::from("_delta_log");
        let files: Vec<deltalake::ObjectMeta> = store
            .list(Some(&log))
            .try_collect()
            .await
            .map_err(|e| storage(&format!("Listing the log of {table}"), e))?;
        for f in files {
            let name = f.location.filename().unwrap_or_default().to_string();
            let Some(v) = name.get(..20).and_then(|d| d.parse::<u64>().ok()) else {
                continue;
            };
            // The commit at the checkpoint's version stays (writers look for it): it is the
            // vacuum's own commit, which holds no row values.
            if v < version {
                store
                    .delete(&f.location)
                    .await
                    .map_err(|e| storage(&format!("Cleaning the log of {table}"), e))?;
            }
        }
        Ok(())
    }

    /// Runs SQL over the named tables (see `session`).
    pub async fn query(
        &self,
        tables: &[(&str, &str, SchemaRef)],
        sql: &str,
    ) -> Result<SendableRecordBatchStream> {
        let ctx = self.session(tables).await?;
        let df = ctx
            .sql(sql)
            .await
            .map_err(|e| storage("Planning a query", e))?;
        df.execute_stream()
            .await
            .map_err(|e| storage("Running a query", e))
    }

    /// Runs a query and converts each batch as it arrives, so only one batch of Arrow data is
    /// held at a time.
    pub async fn query_map<T>(
        &self,
        tables: &[(&str, &str, SchemaRef)],
        sql: &str,
        convert: impl Fn(&RecordBatch) -> Result<Vec<T>>,
    ) -> Result<Vec<T>> {
        let mut stream = self.query(tables, sql).await?;
        let mut out = Vec::new();
        while let Some(batch) = stream
            .try_next()
            .await
            .map_err(|e| storage("Reading query results", e))?
        {
            out.extend(convert(&batch)?);
        }
        Ok(out)
    }

    /// Runs a query and converts its batches on tasks of their own, up to `QUERY_AHEAD`
    /// batches ahead of the receiver: the scan and the conversion of the next batches go on
    /// while the caller works on this one (a sequential pass on one core, say). Items arrive
    /// in the query's order; an error is the last item (a failed scan names the query's
    /// first table). Dropping the receiver stops the scan.
    pub async fn query_ahead<T: Send + 'static>(
        &self,
        tables: &[(&str, &str, SchemaRef)],
        sql: &str,
        convert: fn(&RecordBatch) -> Result<T>,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<T>>> {
        let mut stream = self.query(tables, sql).await?;
        let reading = format!("Reading {}", tables.first().map_or("", |t| t.1));
        let (sink, source) = tokio::sync::mpsc::channel(QUERY_AHEAD);
        tokio::spawn(async move {
            loop {
                let item = match stream.try_next().await {
                    Ok(None) => break,
                    Ok(Some(batch)) => tokio::task::spawn_blocking(move || convert(&batch))
                        .await
                        .unwrap_or_else(|e| Err(storage("Converting query results", e))),
                    Err(e) => Err(storage(&reading, e)),
                };
                let failed = item.is_err();
                if sink.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(source)
    }

    /// The rows of `table` matching `predicate` (SQL), in the declared `schema`.
    pub async fn read_where(
        &self,
        table: &str,
        schema: &SchemaRef,
        predicate: &str,
    ) -> Result<Vec<RecordBatch>> {
        self.query_all(
            &[("t", table, schema.clone())],
            &format!("SELECT * FROM t WHERE {predicate}"),
        )
        .await?
        .iter()
        .map(|b| conform(b, schema))
        .collect()
    }

    /// Collects a query's batches (for small results).
    pub async fn query_all(
        &self,
        tables: &[(&str, &str, SchemaRef)],
        sql: &str,
    ) -> Result<Vec<RecordBatch>> {
        self.query(tables, sql)
            .await?
            .try_collect()
            .await
            .map_err(|e| storage("Reading query results", e))
    }
}

/// A query result batch in a table's declared schema: DataFusion hands strings back as views;
/// writers, loaders and readers get the declared types.
pub fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| deltalake::arrow::compute::cast(c, f.data_type()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| storage("Reading query results", e))?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| storage("Reading query results", e))
}

/// A commit that lost a race with another writer (and can be retried).
fn is_conflict(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::Transaction { .. } | DeltaTableError::VersionAlreadyExists(_)
    ) || e.to_string().to_lowercase().contains("conflict")
}

impl From<DeltaTableError> for Error {
    fn from(e: DeltaTableError) -> Error {
        Error::Storage(e.to_string())
    }
}
