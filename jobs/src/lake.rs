//! The lake: every Delta table under one root (a local folder or `s3://bucket/prefix`).
//! Object-store settings come from the standard `AWS_*` environment variables, which the
//! `object_store` S3 client reads itself; nothing S3-specific is configured here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deltalake::arrow::array::{BooleanArray, RecordBatch};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::datafusion::execution::memory_pool::FairSpillPool;
use deltalake::datafusion::execution::runtime_env::RuntimeEnvBuilder;
use deltalake::datafusion::execution::SendableRecordBatchStream;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::Action;
use deltalake::logstore::parquet_reader::ParquetObjectReader;
use deltalake::parquet::arrow::async_reader::{
    ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder,
};
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::errors::ParquetError;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;

use crate::error::{Error, Result};

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

    async fn handle(&self, table: &str) -> Result<DeltaTable> {
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

/// The Parquet files the lake's writers produce: about this size each, and row groups of at
/// most this many rows (what a writer buffers before a row group goes out).
const TARGET_FILE_BYTES: u64 = 128 << 20;
const ROW_GROUP_ROWS: usize = 131_072;

/// The files a `TableWriter`'s commit removes besides adding its own.
enum Removes {
    Nothing,
    Everything,
    These(Vec<deltalake::kernel::Remove>),
}

/// Writes one table's new files as batches arrive and commits them all at once (`append` or
/// `replace`): a job can write more than fits in memory while readers still see all of it or
/// none of it. Dropped without a commit, it leaves only unreferenced files, which `abort`
/// deletes (and a vacuum would).
pub struct TableWriter {
    lake: Lake,
    table: String,
    writer: RecordBatchWriter,
    rows: u64,
}

impl Lake {
    /// A writer for `table`, created empty with `schema` when it does not exist yet.
    pub async fn writer(&self, table: &str, schema: &SchemaRef) -> Result<TableWriter> {
        let t = match self.open(table).await? {
            Some(t) => t,
            None => {
                self.append(table, vec![RecordBatch::new_empty(schema.clone())])
                    .await?;
                self.handle(table).await?
            }
        };
        let properties = WriterProperties::builder()
            .set_compression(deltalake::parquet::basic::Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let writer = RecordBatchWriter::for_table(&t)
            .map_err(|e| storage(&format!("Writing table {table}"), e))?
            .with_target_file_size(TARGET_FILE_BYTES)
            .with_writer_properties(properties);
        Ok(TableWriter {
            lake: self.clone(),
            table: table.to_string(),
            writer,
            rows: 0,
        })
    }
}

impl Lake {
    /// Replaces the rows of `table` whose text `column` holds one of `keys`, in one commit:
    /// every file holding such a row is rewritten without them, and `rows(old)` — the keys'
    /// new rows, given their old ones — is added. Files holding none are read only for their
    /// key column and stay. (Delta's `replace_where` takes the keys as an SQL `IN` list, which
    /// the Delta scan's predicate conversion walks one stack frame per key: a few thousand
    /// keys overflow the stack.)
    pub async fn replace_keys(
        &self,
        table: &str,
        schema: &SchemaRef,
        column: &str,
        keys: &HashSet<&str>,
        rows: impl FnOnce(Vec<RecordBatch>) -> Result<Vec<RecordBatch>>,
    ) -> Result<()> {
        let op = format!("Rewriting rows of {table}");
        let mut writer = self.writer(table, schema).await?;
        let t = self.handle(table).await?;
        let store = t.object_store();
        let files: Vec<_> = t
            .snapshot()
            .map_err(|e| storage(&op, e))?
            .snapshot()
            .file_views(&t.log_store(), None)
            .try_collect()
            .await
            .map_err(|e| storage(&op, e))?;
        let mut old = Vec::new();
        let mut removes = Vec::new();
        for file in files {
            let path = deltalake::Path::from(file.path().as_ref());
            let size = file.size() as u64;
            let mut holds = false;
            let mut ids = read_parquet(&store, &path, size, Some(column))
                .await
                .map_err(|e| storage(&op, e))?;
            while let Some(batch) = ids.try_next().await.map_err(|e| storage(&op, e))? {
                if key_mask(&batch, column, keys)?.true_count() > 0 {
                    holds = true;
                    break;
                }
            }
            if !holds {
                continue;
            }
            let mut batches = read_parquet(&store, &path, size, None)
                .await
                .map_err(|e| storage(&op, e))?;
            while let Some(batch) = batches.try_next().await.map_err(|e| storage(&op, e))? {
                let batch = conform(&batch, schema)?;
                let mask = key_mask(&batch, column, keys)?;
                let rest = deltalake::arrow::compute::not(&mask).map_err(|e| storage(&op, e))?;
                old.push(filter_record_batch(&batch, &mask).map_err(|e| storage(&op, e))?);
                writer
                    .write(filter_record_batch(&batch, &rest).map_err(|e| storage(&op, e))?)
                    .await?;
            }
            removes.push(file.remove_action(true));
        }
        for batch in rows(old)? {
            writer.write(batch).await?;
        }
        writer.commit(Removes::These(removes)).await
    }
}

/// The batches of one Parquet file of a table (only `column` when given), as a stream.
async fn read_parquet(
    store: &Arc<dyn deltalake::ObjectStore>,
    path: &deltalake::Path,
    size: u64,
    column: Option<&str>,
) -> std::result::Result<ParquetRecordBatchStream<ParquetObjectReader>, ParquetError> {
    let reader = ParquetObjectReader::new(store.clone(), path.clone()).with_file_size(size);
    let mut builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    if let Some(column) = column {
        let mask = ProjectionMask::columns(builder.parquet_schema(), [column]);
        builder = builder.with_projection(mask);
    }
    builder.build()
}

/// Which rows of `batch` have their text `column` in `keys`.
fn key_mask(batch: &RecordBatch, column: &str, keys: &HashSet<&str>) -> Result<BooleanArray> {
    let values = crate::ledger::Columns::new(batch).str(column)?;
    Ok((0..batch.num_rows())
        .map(|i| Some(values.get(i).is_some_and(|v| keys.contains(v))))
        .collect())
}

impl TableWriter {
    /// Streams a batch into the table's open file (nothing is visible before the commit).
    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows() as u64;
        self.writer
            .write(batch)
            .await
            .map_err(|e| storage(&format!("Writing table {}", self.table), e))
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Adds every file written to the table in one commit.
    pub async fn append(self) -> Result<()> {
        self.commit(Removes::Nothing).await
    }

    /// Replaces the whole table by the files written, in one commit.
    pub async fn replace(self) -> Result<()> {
        self.commit(Removes::Everything).await
    }

    async fn commit(mut self, removes: Removes) -> Result<()> {
        let op = format!("Writing table {}", self.table);
        let adds = self.writer.flush().await.map_err(|e| storage(&op, e))?;
        let t = self.lake.handle(&self.table).await?;
        let snapshot = t.snapshot().map_err(|e| storage(&op, e))?;
        let mut actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
        let mode = match removes {
            Removes::Nothing => SaveMode::Append,
            Removes::Everything => {
                let all: Vec<Action> = snapshot
                    .snapshot()
                    .file_views(&t.log_store(), None)
                    .map_ok(|f| Action::Remove(f.remove_action(true)))
                    .try_collect()
                    .await
                    .map_err(|e| storage(&op, e))?;
                actions.extend(all);
                SaveMode::Overwrite
            }
            Removes::These(these) => {
                actions.extend(these.into_iter().map(Action::Remove));
                SaveMode::Overwrite
            }
        };
        if actions.is_empty() {
            return Ok(());
        }
        CommitBuilder::default()
            .with_actions(actions)
            .build(
                Some(snapshot),
                t.log_store(),
                DeltaOperation::Write {
                    mode,
                    partition_by: None,
                    predicate: None,
                },
            )
            .await
            .map_err(|e| storage(&op, e))?;
        Ok(())
    }

    /// Deletes the files written, committing nothing.
    pub async fn abort(mut self) -> Result<()> {
        use deltalake::logstore::object_store::ObjectStoreExt;
        let op = format!("Abandoning a write to {}", self.table);
        let adds = self.writer.flush().await.map_err(|e| storage(&op, e))?;
        let t = self.lake.handle(&self.table).await?;
        let store = t.object_store();
        for add in adds {
            store
                .delete(&deltalake::Path::from(add.path.as_str()))
                .await
                .map_err(|e| storage(&op, e))?;
        }
        Ok(())
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
