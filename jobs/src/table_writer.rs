//! Writing Delta tables larger than memory: `TableWriter` streams batches into new Parquet
//! files and commits them all at once, and `Lake::replace_keys` rewrites the rows of some
//! keys (an incremental build's entities) touching only the files that hold them.
//!
//! History tables keep their current rows (`valid_to` null) in files of their own, tagged
//! `defacto.rows = current`; files of closed rows are tagged `closed`. An increment that only
//! appends to entities' histories (closes their current row, adds new ones) rewrites current
//! files and adds closed ones: the closed history, most of a table, stays as it is. A file
//! without a tag (written before, or compacted by `maintain`) may hold either and is treated
//! as holding both, which is always correct, only slower.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deltalake::arrow::array::{BooleanArray, RecordBatch};
use deltalake::arrow::compute::{filter_record_batch, is_null, not};
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, Add, Remove};
use deltalake::logstore::parquet_reader::ParquetObjectReader;
use deltalake::parquet::arrow::async_reader::{
    ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder,
};
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::errors::ParquetError;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTable;
use futures::TryStreamExt;

use crate::error::{Error, Result};
use crate::lake::{conform, Lake};

/// The Parquet files the lake's writers produce: about this size each, and row groups of at
/// most this many rows (what a writer buffers before a row group goes out).
const TARGET_FILE_BYTES: u64 = 128 << 20;
const ROW_GROUP_ROWS: usize = 131_072;

/// The dictionary a column chunk builds before the writer gives up on it and writes the
/// values plain (Parquet's default is 1 MiB). A column of few distinct values (states, plans,
/// event types) needs a few KiB; one of ids, emails or JSON text never fits, and every value
/// interned until the limit is reached was hashing work thrown away.
const DICTIONARY_PAGE_BYTES: usize = 64 << 10;

/// Columns of digests (`e_` + 64 hex digits, unique per row): stored plain and uncompressed.
/// A dictionary has nothing to share in them and Snappy saves about 6 of their 70 bytes
/// (1 M ledger events: 116.4 MB instead of 110.4 MB), while `normalize` reads the whole
/// ledger's ids on every run: their decompression was 16 % of a 1 % increment's normalize.
const DIGEST_COLUMNS: [&str; 1] = ["event_id"];

/// The Delta file tag saying which rows of a history table a file holds.
const ROWS_TAG: &str = "defacto.rows";
/// The column whose null marks a history table's current rows.
const VALID_TO: &str = "valid_to";

fn storage(op: &str, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("{op} failed: {e}"))
}

/// The rows `Lake::replace_keys` replaces: those of `table` whose text `column` holds one
/// of `keys`.
#[derive(Clone, Copy)]
pub struct KeyedRows<'a> {
    pub table: &'a str,
    pub schema: &'a SchemaRef,
    pub column: &'a str,
    pub keys: &'a HashSet<&'a str>,
}

/// The files a `TableWriter`'s commit removes besides adding its own.
enum Removes {
    Nothing,
    Everything,
    These(Vec<Remove>),
}

/// Writes one table's new files as batches arrive and commits them all at once (`append`,
/// `replace`): a job can write more than fits in memory while readers still see all of it or
/// none of it. Nothing touches storage before the first rows (the table is created then if it
/// does not exist). Dropped without a commit, it leaves only unreferenced files, which `abort`
/// deletes (and a vacuum would).
///
/// Batches are encoded into Parquet by a task of their own, fed through a short queue, so a
/// job goes on making its next batches while the last ones are encoded and written (the
/// encoding was a quarter of `normalize`'s main thread, with the other core idle meanwhile).
pub struct TableWriter {
    lake: Lake,
    table: String,
    schema: SchemaRef,
    /// Current and closed rows go to files of their own (a history table).
    history: bool,
    encoder: Option<Encoder>,
}

/// The task writing a `TableWriter`'s batches into its open files; it hands the files back
/// when its queue closes, with the first error it met (after which it writes nothing more).
enum Encoder {
    Running {
        queue: tokio::sync::mpsc::Sender<RecordBatch>,
        task: tokio::task::JoinHandle<(Files, Result<()>)>,
    },
    /// Stopped at a write error, already reported: its files, for `abort` to delete.
    Failed(Box<Files>),
}

/// Batches waiting for the encoder: enough to keep it busy, few enough that the rows held in
/// memory stay a couple of batches.
const ENCODER_QUEUE: usize = 2;

/// The open file writers of a `TableWriter`.
struct Files {
    /// Every row; for a history table, the closed rows.
    all: RecordBatchWriter,
    /// A history table's current rows.
    current: Option<RecordBatchWriter>,
}

impl Lake {
    /// A writer for `table` (of `schema`).
    pub fn writer(&self, table: &str, schema: &SchemaRef) -> TableWriter {
        self.table_writer(table, schema, false)
    }

    /// A writer for a history table (a `valid_to` column): current and closed rows go to
    /// files of their own.
    pub fn history_writer(&self, table: &str, schema: &SchemaRef) -> TableWriter {
        self.table_writer(table, schema, true)
    }

    fn table_writer(&self, table: &str, schema: &SchemaRef, history: bool) -> TableWriter {
        TableWriter {
            lake: self.clone(),
            table: table.to_string(),
            schema: schema.clone(),
            history: history && schema.column_with_name(VALID_TO).is_some(),
            encoder: None,
        }
    }

    /// The table, created empty with `schema` when it does not exist yet.
    async fn open_or_create(&self, table: &str, schema: &SchemaRef) -> Result<DeltaTable> {
        match self.open(table).await? {
            Some(t) => Ok(t),
            None => {
                self.append(table, vec![RecordBatch::new_empty(schema.clone())])
                    .await?;
                self.handle(table).await
            }
        }
    }

    /// Replaces the rows of history `table` whose text `column` holds one of `keys`, in one
    /// commit: the files holding such rows are rewritten without them, and `rows(old)` — the
    /// keys' new rows given their old ones — is added. Files holding none are read only for
    /// their key column and stay.
    ///
    /// For the keys in `appended` the caller needs only the current row (it closes it and
    /// adds rows after it), so their closed rows are neither read nor rewritten; `rows` is
    /// told which of them may have closed rows it did not see (when every appended key's
    /// current row was found, the closed files are not scanned at all and that is every
    /// appended key; otherwise exactly those found there), and returns `None` when it needs
    /// those after all (a change before the current row), and the rewrite then runs again
    /// with every key read whole. (Delta's `replace_where` would take the keys as an SQL `IN`
    /// list, which the Delta scan's predicate conversion walks one stack frame per key: a
    /// few thousand keys overflow the stack.)
    pub async fn replace_keys(
        &self,
        target: &KeyedRows<'_>,
        appended: &HashSet<&str>,
        rows: impl Fn(Vec<RecordBatch>, &HashSet<String>) -> Result<Option<Vec<RecordBatch>>>,
    ) -> Result<()> {
        for appended in [appended, &HashSet::new()] {
            if self.rewrite_keys(target, appended, &rows).await? {
                return Ok(());
            }
        }
        Err(Error::Storage(format!(
            "Rewriting rows of {} failed: the new rows could not be made from the old",
            target.table
        )))
    }

    /// One attempt of `replace_keys`; `false` when `rows` asked for every key's closed rows
    /// (nothing is committed then).
    async fn rewrite_keys(
        &self,
        target: &KeyedRows<'_>,
        appended: &HashSet<&str>,
        rows: &impl Fn(Vec<RecordBatch>, &HashSet<String>) -> Result<Option<Vec<RecordBatch>>>,
    ) -> Result<bool> {
        let KeyedRows {
            table,
            schema,
            column,
            keys,
        } = *target;
        let op = format!("Rewriting rows of {table}");
        let started = std::time::Instant::now();
        let mut writer = self.history_writer(table, schema);
        let t = self.open_or_create(table, schema).await?;
        let store = t.object_store();
        let files: Vec<_> = t
            .snapshot()
            .map_err(|e| storage(&op, e))?
            .snapshot()
            .file_views(&t.log_store(), None)
            .try_collect()
            .await
            .map_err(|e| storage(&op, e))?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            files = files.len(),
            "files listed"
        );
        // The keys whose every row is read; closed files hold none of the others' rows that
        // the rewrite needs.
        let whole: HashSet<&str> = keys.difference(appended).copied().collect();
        #[allow(deprecated)]
        let tag = |f: &deltalake::kernel::LogicalFileView| {
            f.add_action()
                .tags
                .and_then(|t| t.get(ROWS_TAG).cloned().flatten())
        };
        let (closed_files, open_files): (Vec<_>, Vec<_>) = files
            .into_iter()
            .partition(|f| tag(f).is_some_and(|v| v == "closed"));
        // The appended keys seen in the files that are not closed: with a current row.
        let mut current: HashSet<String> = HashSet::new();
        let mut unseen_closed: HashSet<String> = HashSet::new();
        let mut old = Vec::new();
        let mut removes = Vec::new();
        for (closed, files) in [(false, open_files), (true, closed_files)] {
            if closed && whole.is_empty() && appended.iter().all(|k| current.contains(*k)) {
                // Every key is appended and its current row is in hand: the closed files'
                // key columns are not even read. Any of the keys may have closed rows there,
                // so the rewrite is told so of all of them.
                unseen_closed = current;
                break;
            }
            for file in files {
                let wanted = if closed { &whole } else { keys };
                let path = file.object_store_path();
                let size = file.size() as u64;
                // A file of current rows holds a row of nearly every entity an increment
                // reaches: it is read whole at once, without a first pass over its key column
                // (should it hold none of the keys, it is rewritten as it was).
                let at_once = tag(&file).is_some_and(|v| v == "current");
                if !at_once {
                    let mut holds = false;
                    let mut ids = read_parquet(&store, &path, size, Some(column))
                        .await
                        .map_err(|e| storage(&op, e))?;
                    while let Some(batch) = ids.try_next().await.map_err(|e| storage(&op, e))? {
                        let values = crate::ledger::Columns::new(&batch).str(column)?;
                        for i in 0..batch.num_rows() {
                            let Some(v) = values.get(i) else { continue };
                            if wanted.contains(v) {
                                holds = true;
                                if !closed && appended.contains(v) {
                                    current.insert(v.to_string());
                                }
                            } else if closed && appended.contains(v) {
                                unseen_closed.insert(v.to_string());
                            }
                        }
                    }
                    tracing::debug!(
                        ms = started.elapsed().as_millis() as u64,
                        closed,
                        holds,
                        "key column read"
                    );
                    if !holds {
                        continue;
                    }
                }
                let mut batches = read_parquet(&store, &path, size, None)
                    .await
                    .map_err(|e| storage(&op, e))?;
                while let Some(batch) = batches.try_next().await.map_err(|e| storage(&op, e))? {
                    let batch = conform(&batch, schema)?;
                    let mask = key_mask(&batch, column, wanted)?;
                    if at_once {
                        let values = crate::ledger::Columns::new(&batch).str(column)?;
                        current.extend(
                            (0..batch.num_rows())
                                .filter(|&i| mask.value(i))
                                .filter_map(|i| values.get(i))
                                .filter(|v| appended.contains(v))
                                .map(str::to_string),
                        );
                    }
                    let rest = not(&mask).map_err(|e| storage(&op, e))?;
                    old.push(filter_record_batch(&batch, &mask).map_err(|e| storage(&op, e))?);
                    writer
                        .write(filter_record_batch(&batch, &rest).map_err(|e| storage(&op, e))?)
                        .await?;
                }
                removes.push(file.remove_action(true));
            }
        }
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            files = removes.len(),
            "rows to rewrite read"
        );
        let Some(new) = rows(old, &unseen_closed)? else {
            writer.abort().await?;
            return Ok(false);
        };
        for batch in new {
            writer.write(batch).await?;
        }
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "rows rewritten");
        writer.commit(Removes::These(removes)).await?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "rewrite committed"
        );
        Ok(true)
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

/// Tags the Add actions of one kind of a history table's files.
fn tagged(adds: Vec<Add>, rows: &str) -> impl Iterator<Item = Action> + '_ {
    adds.into_iter().map(move |mut add| {
        add.tags
            .get_or_insert_with(HashMap::new)
            .insert(ROWS_TAG.to_string(), Some(rows.to_string()));
        Action::Add(add)
    })
}

impl Files {
    /// Writes a batch: for a history table, its current rows to their own files.
    async fn write(&mut self, batch: RecordBatch, op: &str) -> Result<()> {
        let Some(current) = self.current.as_mut() else {
            return self.all.write(batch).await.map_err(|e| storage(op, e));
        };
        let valid_to = batch
            .column_by_name(VALID_TO)
            .ok_or_else(|| storage(op, "the batch has no valid_to column"))?;
        let open = is_null(valid_to.as_ref()).map_err(|e| storage(op, e))?;
        let closed = not(&open).map_err(|e| storage(op, e))?;
        for (mask, writer) in [(&open, current), (&closed, &mut self.all)] {
            let part = filter_record_batch(&batch, mask).map_err(|e| storage(op, e))?;
            if part.num_rows() > 0 {
                writer.write(part).await.map_err(|e| storage(op, e))?;
            }
        }
        Ok(())
    }
}

impl TableWriter {
    /// What this writer does, for errors.
    fn op(&self) -> String {
        format!("Writing table {}", self.table)
    }

    /// The file writers, opened (and the table created).
    async fn open_files(&self) -> Result<Files> {
        let t = self.lake.open_or_create(&self.table, &self.schema).await?;
        // A history table's current rows hold each key (its first column) once: like a
        // digest, nothing for a dictionary or Snappy to share, and these files are the ones
        // an incremental build reads and writes again. (Closed rows repeat their key, row
        // after row, which Snappy does compress.)
        let key = self.schema.fields().first().map(|f| f.name().as_str());
        let new = |current: bool| -> Result<RecordBatchWriter> {
            let mut properties = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
                .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
            let unique = DIGEST_COLUMNS
                .into_iter()
                .filter(|c| self.schema.column_with_name(c).is_some())
                .chain(key.filter(|_| current));
            for column in unique {
                let path = ColumnPath::from(column);
                properties = properties
                    .set_column_compression(path.clone(), Compression::UNCOMPRESSED)
                    .set_column_dictionary_enabled(path, false);
            }
            let properties = properties.build();
            Ok(RecordBatchWriter::for_table(&t)
                .map_err(|e| storage(&self.op(), e))?
                .with_target_file_size(TARGET_FILE_BYTES)
                .with_writer_properties(properties))
        };
        let current = if self.history { Some(new(true)?) } else { None };
        Ok(Files {
            all: new(false)?,
            current,
        })
    }

    /// Streams a batch into the table's open file(s) (nothing is visible before the commit).
    /// The batch is queued for the encoder; an error of an earlier batch's write is reported
    /// here or at the commit.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.encoder.is_none() {
            let mut files = self.open_files().await?;
            let op = self.op();
            let (queue, mut batches) = tokio::sync::mpsc::channel(ENCODER_QUEUE);
            let task = tokio::spawn(async move {
                while let Some(batch) = batches.recv().await {
                    if let Err(e) = files.write(batch, &op).await {
                        return (files, Err(e));
                    }
                }
                (files, Ok(()))
            });
            self.encoder = Some(Encoder::Running { queue, task });
        }
        let sent = match self.encoder.as_ref() {
            Some(Encoder::Running { queue, .. }) => queue.send(batch).await.is_ok(),
            _ => false,
        };
        if !sent {
            // The encoder stopped at an error: that error is this write's.
            let (files, outcome) = self.stop_encoder().await?.expect("an encoder ran");
            self.encoder = Some(Encoder::Failed(Box::new(files)));
            outcome?;
            return Err(self.earlier_failure());
        }
        Ok(())
    }

    fn earlier_failure(&self) -> Error {
        storage(&self.op(), "an earlier batch could not be written")
    }

    /// Closes the encoder's queue and waits for it: the open files, and how their writing
    /// went (`None` when nothing was written).
    async fn stop_encoder(&mut self) -> Result<Option<(Files, Result<()>)>> {
        match self.encoder.take() {
            None => Ok(None),
            Some(Encoder::Failed(files)) => Ok(Some((*files, Err(self.earlier_failure())))),
            Some(Encoder::Running { queue, task }) => {
                drop(queue);
                let done = task.await.map_err(|e| storage(&self.op(), e))?;
                Ok(Some(done))
            }
        }
    }

    /// Adds every file written to the table in one commit.
    pub async fn append(self) -> Result<()> {
        self.commit(Removes::Nothing).await
    }

    /// Replaces the whole table by the files written, in one commit.
    pub async fn replace(self) -> Result<()> {
        self.commit(Removes::Everything).await
    }

    /// The Add actions of every file written, tagged by kind for a history table (once the
    /// encoder is done; a write that failed fails this, unless `anyway`, which an abort uses to
    /// find the files to delete).
    async fn flush(&mut self, anyway: bool) -> Result<Vec<Action>> {
        let op = self.op();
        let Some((mut files, outcome)) = self.stop_encoder().await? else {
            return Ok(Vec::new());
        };
        if !anyway {
            outcome?;
        }
        let files = &mut files;
        let adds = files.all.flush().await.map_err(|e| storage(&op, e))?;
        let Some(current) = files.current.as_mut() else {
            return Ok(adds.into_iter().map(Action::Add).collect());
        };
        let open = current.flush().await.map_err(|e| storage(&op, e))?;
        Ok(tagged(adds, "closed")
            .chain(tagged(open, "current"))
            .collect())
    }

    async fn commit(mut self, removes: Removes) -> Result<()> {
        let op = self.op();
        let adds = self.flush(false).await?;
        let removes_none = match &removes {
            Removes::Nothing => true,
            Removes::These(these) => these.is_empty(),
            Removes::Everything => false,
        };
        if adds.is_empty() && removes_none {
            // Nothing to commit: the table is not even opened again.
            return Ok(());
        }
        // Two writers that create a table at once (the shards of a first build) can both
        // commit its metadata, the second one at the next version; the other's commit then
        // fails as "metadata changed". When what this commit removes does not come from the
        // snapshot it read (nothing, or everything there is), it is made again on the new one.
        let independent = !matches!(&removes, Removes::These(these) if !these.is_empty());
        let mut attempt = 0;
        loop {
            let t = self.lake.open_or_create(&self.table, &self.schema).await?;
            let snapshot = t.snapshot().map_err(|e| storage(&op, e))?;
            let mut actions = adds.clone();
            let mode = match &removes {
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
                    actions.extend(these.iter().cloned().map(Action::Remove));
                    SaveMode::Overwrite
                }
            };
            if actions.is_empty() {
                return Ok(());
            }
            let committed = CommitBuilder::default()
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
                .await;
            match committed {
                Ok(_) => return Ok(()),
                Err(e) if independent && attempt < 5 && metadata_race(&e) => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => return Err(storage(&op, e)),
            }
        }
    }

    /// Deletes the files written, committing nothing.
    pub async fn abort(mut self) -> Result<()> {
        use deltalake::logstore::object_store::ObjectStoreExt;
        let op = format!("Abandoning a write to {}", self.table);
        let actions = self.flush(true).await?;
        if actions.is_empty() {
            return Ok(());
        }
        let t = self.lake.handle(&self.table).await?;
        let store = t.object_store();
        for action in actions {
            if let Action::Add(add) = action {
                store
                    .delete(&deltalake::Path::from(add.path.as_str()))
                    .await
                    .map_err(|e| storage(&op, e))?;
            }
        }
        Ok(())
    }
}

/// A commit that lost to another writer's metadata (the table created twice at once).
fn metadata_race(e: &impl std::fmt::Display) -> bool {
    e.to_string().contains("Metadata changed since last commit")
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Int64Array, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
    }

    fn numbers(from: i64, to: i64) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![Arc::new(Int64Array::from_iter_values(from..to))],
        )
        .unwrap()
    }

    /// The column `n` of a batch.
    fn n_values(b: &RecordBatch) -> Result<Vec<i64>> {
        Ok(crate::ledger::Columns::new(b).i64("n")?.values().to_vec())
    }

    async fn rows(lake: &Lake) -> Vec<i64> {
        let mut out = lake
            .query_map(&[("t", "t", schema())], "SELECT n FROM t", n_values)
            .await
            .unwrap();
        out.sort_unstable();
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_batches_all_land_in_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(&dir.path().display().to_string()).unwrap();
        let mut writer = lake.writer("t", &schema());
        // More batches than the encoder's queue holds.
        for i in 0..10 {
            writer.write(numbers(i * 100, i * 100 + 100)).await.unwrap();
        }
        writer.append().await.unwrap();
        assert_eq!(rows(&lake).await, (0..1000).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_converted_ahead_arrive_in_query_order_and_stop_at_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(&dir.path().display().to_string()).unwrap();
        // Ten files, written in descending order, so only the query's sort orders them; more
        // rows than one query batch holds.
        for i in (0..10).rev() {
            let mut writer = lake.writer("t", &schema());
            writer
                .write(numbers(i * 2_000, i * 2_000 + 2_000))
                .await
                .unwrap();
            writer.append().await.unwrap();
        }
        let tables = [("t", "t", schema())];
        let sql = "SELECT n FROM t ORDER BY n";
        let mut ahead = lake.query_ahead(&tables, sql, n_values).await.unwrap();
        let (mut all, mut batches) = (Vec::new(), 0);
        while let Some(item) = ahead.recv().await {
            all.extend(item.unwrap());
            batches += 1;
        }
        assert!(batches > 1, "the query gave {batches} batch");
        assert_eq!(all, (0..20_000).collect::<Vec<_>>());

        // A conversion that fails at the batch holding 10 000: what came before arrives, then
        // the error, then nothing.
        let failing = |b: &RecordBatch| -> Result<Vec<i64>> {
            let v = n_values(b)?;
            if v.contains(&10_000) {
                Err(Error::Storage("no conversion for 10000".into()))
            } else {
                Ok(v)
            }
        };
        let mut ahead = lake.query_ahead(&tables, sql, failing).await.unwrap();
        let mut items = Vec::new();
        while let Some(item) = ahead.recv().await {
            items.push(item);
        }
        let error = items
            .pop()
            .unwrap()
            .expect_err("the last item is the error");
        assert!(
            error.to_string().contains("no conversion for 10000"),
            "{error}"
        );
        let before: Vec<i64> = items.into_iter().flat_map(|i| i.unwrap()).collect();
        assert_eq!(before, (0..before.len() as i64).collect::<Vec<_>>());
        assert!(before.len() <= 10_000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_the_encoder_cannot_write_fails_the_commit_and_adds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(&dir.path().display().to_string()).unwrap();
        let mut writer = lake.writer("t", &schema());
        writer.write(numbers(0, 10)).await.unwrap();
        // A batch of another schema: the encoder stops at it.
        let other = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, false)]));
        let bad =
            RecordBatch::try_new(other, vec![Arc::new(StringArray::from(vec!["x"]))]).unwrap();
        let mut failed = writer.write(bad).await.err();
        for i in 1..5 {
            if failed.is_some() {
                break;
            }
            failed = writer.write(numbers(i * 10, i * 10 + 10)).await.err();
        }
        let error = match failed {
            Some(e) => e,
            None => writer
                .append()
                .await
                .expect_err("the commit reports the bad batch"),
        };
        assert!(error.to_string().contains("Writing table t"), "{error}");
        assert!(rows(&lake).await.is_empty(), "nothing was committed");
    }
}
