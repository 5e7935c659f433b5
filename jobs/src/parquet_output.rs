//! Writing one Parquet file from a stream of record batches, its columns encoded in parallel.
//!
//! Arrow's `ArrowWriter` encodes a row group's columns one after another on one thread; an
//! export of a history table spent most of its time there. Here each row group's columns are
//! encoded on the rayon pool, one column writer per column; the encoded chunks are appended
//! in column order, so the file is the same whatever the number of threads. The bytes go to
//! the object store as each row group is finished (an in-memory buffer holds at most one
//! encoded row group).
//!
//! The rows are also ordered by a key here: `(batch, row)` references are sorted by the key's
//! row-format bytes and each column's writer gathers its own values, which costs one copy of
//! the table instead of the sort-then-merge copies of a query's `ORDER BY`.

use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, RecordBatch};
use deltalake::arrow::compute::{interleave, SortOptions};
use deltalake::arrow::datatypes::{DataType, SchemaRef};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::row::{RowConverter, Rows, SortField};
use deltalake::logstore::object_store::buffered::BufWriter;
use deltalake::logstore::object_store::path::Path as StorePath;
use deltalake::logstore::object_store::ObjectStore;
use deltalake::parquet::arrow::arrow_writer::{
    compute_leaves, ArrowColumnChunk, ArrowColumnWriter, ArrowRowGroupWriterFactory,
};
use deltalake::parquet::arrow::{add_encoded_arrow_schema_to_metadata, ArrowSchemaConverter};
use deltalake::parquet::basic::Compression;
use deltalake::parquet::errors::ParquetError;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::file::writer::SerializedFileWriter;
use deltalake::parquet::schema::types::ColumnPath;
use futures::TryStreamExt;
use rayon::prelude::*;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::warehouse::Batches;

/// Rows per row group: small enough that readers can skip groups by their id statistics
/// (files are sorted by id) and a group's gathered columns stay small, large enough to
/// compress well.
pub const ROW_GROUP_ROWS: usize = 256 * 1024;

/// The export's writer properties: Snappy; no dictionary for ids and instants, which are
/// (nearly) unique per row so a dictionary only costs time; column-chunk statistics (readers
/// prune row groups with them) but no page-level ones.
fn properties(schema: &SchemaRef, group_size: usize) -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_max_row_group_row_count(Some(group_size));
    for field in schema.fields() {
        let unique =
            field.name().ends_with("_id") || matches!(field.data_type(), DataType::Timestamp(..));
        if unique {
            props =
                props.set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false);
        }
    }
    let mut props = props.build();
    // Readers get the Arrow types back (time zone of the timestamps included).
    add_encoded_arrow_schema_to_metadata(schema, &mut props);
    props
}

/// The rows of one row group: `(batch, row)` pairs into `batches`, in order.
struct Group {
    batches: Arc<Vec<RecordBatch>>,
    rows: Vec<(usize, usize)>,
}

/// Encodes one row group: every column gathered and encoded by its own writer, in parallel.
fn encode(
    schema: &SchemaRef,
    writers: Vec<ArrowColumnWriter>,
    group: &Group,
) -> std::result::Result<Vec<ArrowColumnChunk>, ParquetError> {
    // The history schemas are flat: one leaf, hence one writer, per field.
    writers
        .into_par_iter()
        .zip(schema.fields().par_iter())
        .enumerate()
        .map(|(i, (mut writer, field))| {
            let columns: Vec<&dyn Array> =
                group.batches.iter().map(|b| b.column(i).as_ref()).collect();
            let gathered = interleave(&columns, &group.rows)
                .map_err(|e| ParquetError::General(e.to_string()))?;
            for leaf in compute_leaves(field, &gathered)? {
                writer.write(&leaf)?;
            }
            writer.close()
        })
        .collect()
}

/// The `(batch, row)` pairs of every row of `batches` in ascending order of the `key`
/// columns (ties — there are none on a history table's key — in input order). Keys are
/// compared in Arrow's row format (plain byte comparisons), sorted on the rayon pool.
fn sorted_rows(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    key: &[String],
) -> std::result::Result<Vec<(usize, usize)>, ArrowError> {
    let indices = key
        .iter()
        .map(|k| schema.index_of(k))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let fields = indices
        .iter()
        .map(|&i| {
            let options = SortOptions {
                descending: false,
                nulls_first: false,
            };
            SortField::new_with_options(schema.field(i).data_type().clone(), options)
        })
        .collect();
    let converter = RowConverter::new(fields)?;
    let encoded = batches
        .par_iter()
        .map(|b| {
            let columns: Vec<ArrayRef> = indices.iter().map(|&i| b.column(i).clone()).collect();
            converter.convert_columns(&columns)
        })
        .collect::<std::result::Result<Vec<Rows>, _>>()?;
    let mut order: Vec<(usize, usize)> = batches
        .iter()
        .enumerate()
        .flat_map(|(b, batch)| (0..batch.num_rows()).map(move |r| (b, r)))
        .collect();
    order.par_sort_unstable_by(|x, y| {
        encoded[x.0]
            .row(x.1)
            .cmp(&encoded[y.0].row(y.1))
            .then(x.cmp(y))
    });
    Ok(order)
}

type Encoded = std::result::Result<Vec<ArrowColumnChunk>, ParquetError>;

/// The file being written: row groups are encoded off the async task, one at a time, and
/// appended in order.
struct Pipeline<'a> {
    path: &'a StorePath,
    schema: SchemaRef,
    file: SerializedFileWriter<Vec<u8>>,
    factory: Arc<ArrowRowGroupWriterFactory>,
    out: BufWriter,
    groups: usize,
    encoding: Option<tokio::task::JoinHandle<Encoded>>,
}

fn failed(path: &StorePath, e: &dyn std::fmt::Display) -> Error {
    Error::Storage(format!("Writing {path} failed: {e}"))
}

impl<'a> Pipeline<'a> {
    fn new(
        store: &Arc<dyn ObjectStore>,
        path: &'a StorePath,
        schema: &SchemaRef,
        group_size: usize,
    ) -> Result<Pipeline<'a>> {
        let props = Arc::new(properties(schema, group_size));
        let parquet_schema = ArrowSchemaConverter::new()
            .with_coerce_types(props.coerce_types())
            .convert(schema)
            .map_err(|e| failed(path, &e))?;
        let file = SerializedFileWriter::new(Vec::new(), parquet_schema.root_schema_ptr(), props)
            .map_err(|e| failed(path, &e))?;
        let factory = Arc::new(ArrowRowGroupWriterFactory::new(&file, schema.clone()));
        Ok(Pipeline {
            path,
            schema: schema.clone(),
            file,
            factory,
            out: BufWriter::new(store.clone(), path.clone()),
            groups: 0,
            encoding: None,
        })
    }

    /// Hands a full row group to the encoder, once the previous one is written: chunks go
    /// to the file in order, and at most two groups are held at once.
    async fn push(&mut self, group: Group) -> Result<()> {
        let path = self.path;
        self.settle().await?;
        let writers = self
            .factory
            .create_column_writers(self.groups)
            .map_err(|e| failed(path, &e))?;
        self.groups += 1;
        let schema = self.schema.clone();
        self.encoding = Some(tokio::task::spawn_blocking(move || {
            encode(&schema, writers, &group)
        }));
        Ok(())
    }

    /// Waits for the group being encoded and appends it to the file, whose bytes so far then
    /// go to the store.
    async fn settle(&mut self) -> Result<()> {
        let path = self.path;
        let Some(encoding) = self.encoding.take() else {
            return Ok(());
        };
        let chunks = encoding
            .await
            .map_err(|e| failed(path, &e))?
            .map_err(|e| failed(path, &e))?;
        let mut group = self.file.next_row_group().map_err(|e| failed(path, &e))?;
        for chunk in chunks {
            chunk
                .append_to_row_group(&mut group)
                .map_err(|e| failed(path, &e))?;
        }
        group.close().map_err(|e| failed(path, &e))?;
        self.drain().await
    }

    async fn drain(&mut self) -> Result<()> {
        let path = self.path;
        self.file.flush().map_err(|e| failed(path, &e))?;
        let bytes = std::mem::take(self.file.inner_mut());
        self.out
            .write_all(&bytes)
            .await
            .map_err(|e| failed(path, &e))
    }

    async fn finish(mut self) -> Result<()> {
        let path = self.path;
        self.settle().await?;
        self.file.finish().map_err(|e| failed(path, &e))?;
        self.drain().await?;
        self.out.shutdown().await.map_err(|e| failed(path, &e))
    }
}

/// Writes `batches` (in `schema`) to `path` in `store`, sorted by the `key` columns
/// (ascending); returns the number of rows. The rows are read whole, ordered by their keys,
/// and gathered row group by row group as they are encoded.
pub async fn write_sorted_parquet(
    store: &Arc<dyn ObjectStore>,
    path: &StorePath,
    schema: &SchemaRef,
    batches: Batches<'_>,
    key: &[String],
) -> Result<u64> {
    write_sorted_in_groups(store, path, schema, batches, key, ROW_GROUP_ROWS).await
}

async fn write_sorted_in_groups(
    store: &Arc<dyn ObjectStore>,
    path: &StorePath,
    schema: &SchemaRef,
    batches: Batches<'_>,
    key: &[String],
    group_size: usize,
) -> Result<u64> {
    let all: Vec<RecordBatch> = batches
        .try_filter(|b| futures::future::ready(b.num_rows() > 0))
        .try_collect()
        .await?;
    let (sort_schema, key) = (schema.clone(), key.to_vec());
    let (all, order) = tokio::task::spawn_blocking(move || {
        let order = sorted_rows(&sort_schema, &all, &key);
        (all, order)
    })
    .await
    .map_err(|e| failed(path, &e))?;
    let order = order.map_err(|e| failed(path, &e))?;
    let all = Arc::new(all);
    let mut pipeline = Pipeline::new(store, path, schema, group_size)?;
    for rows in order.chunks(group_size) {
        pipeline
            .push(Group {
                batches: all.clone(),
                rows: rows.to_vec(),
            })
            .await?;
    }
    pipeline.finish().await?;
    Ok(order.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use deltalake::arrow::datatypes::{Field, Schema, TimeUnit};
    use deltalake::logstore::object_store::memory::InMemory;
    use deltalake::logstore::object_store::ObjectStoreExt;
    use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use futures::StreamExt;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Utf8, false),
            Field::new("logins", DataType::Int64, true),
            Field::new(
                "valid_from",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ]))
    }

    /// The rows numbered `numbers`: id `c0042`, every third count null.
    fn batch_of(numbers: &[i64]) -> RecordBatch {
        let ids: Vec<String> = numbers.iter().map(|i| format!("c{i:04}")).collect();
        let counts: Vec<Option<i64>> = numbers.iter().map(|&i| (i % 3 != 0).then_some(i)).collect();
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(Int64Array::from(counts)),
                Arc::new(TimestampMicrosecondArray::from(numbers.to_vec()).with_timezone("UTC")),
            ],
        )
        .unwrap()
    }

    /// Writes `input` sorted by `key` in groups of 16 rows; returns the row count, the row
    /// groups' sizes and every row read back.
    async fn write_and_read(input: Vec<RecordBatch>, key: &[&str]) -> (u64, Vec<i64>, RecordBatch) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = StorePath::from("out/customer_history.parquet");
        let batches = futures::stream::iter(input.into_iter().map(Ok)).boxed();
        let key: Vec<String> = key.iter().map(|k| k.to_string()).collect();
        let rows = write_sorted_in_groups(&store, &path, &schema(), batches, &key, 16)
            .await
            .unwrap();
        let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let groups = reader
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        // The Arrow schema comes back, time zone included.
        assert_eq!(reader.schema(), &schema());
        let read: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
        let all = deltalake::arrow::compute::concat_batches(&schema(), &read).unwrap();
        (rows, groups, all)
    }

    #[tokio::test]
    async fn rows_come_out_sorted_by_the_key_in_full_row_groups() {
        // 70 rows over 10 batches in a scrambled order (each batch's rows descending).
        let input = [3i64, 0, 9, 5, 1, 8, 2, 7, 4, 6]
            .iter()
            .map(|b| batch_of(&(0..7).map(|r| b + 10 * (6 - r)).collect::<Vec<_>>()))
            .collect();
        let (rows, groups, all) = write_and_read(input, &["customer_id", "valid_from"]).await;
        assert_eq!(rows, 70);
        assert_eq!(groups, [16, 16, 16, 16, 6]);
        assert_eq!(all, batch_of(&(0..70).collect::<Vec<_>>()));
        assert_eq!(all.column(1).null_count(), 24);
    }

    #[tokio::test]
    async fn a_later_key_column_breaks_ties_of_the_first() {
        // Two rows per id; the second key column orders them.
        let ids = StringArray::from(vec!["b", "a", "b", "a"]);
        let counts = Int64Array::from(vec![Some(1), Some(2), Some(3), None]);
        let from = TimestampMicrosecondArray::from(vec![20, 10, 10, 5]).with_timezone("UTC");
        let input = RecordBatch::try_new(
            schema(),
            vec![Arc::new(ids), Arc::new(counts), Arc::new(from)],
        )
        .unwrap();
        let (rows, groups, all) = write_and_read(vec![input], &["customer_id", "valid_from"]).await;
        assert_eq!((rows, groups), (4, vec![4]));
        let ids = all
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let counts = all.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let got: Vec<(&str, Option<i64>)> = (0..4)
            .map(|i| (ids.value(i), counts.is_valid(i).then(|| counts.value(i))))
            .collect();
        assert_eq!(
            got,
            [("a", None), ("a", Some(2)), ("b", Some(3)), ("b", Some(1))]
        );
    }

    #[tokio::test]
    async fn no_rows_write_a_file_without_row_groups() {
        let (rows, groups, all) = write_and_read(Vec::new(), &["customer_id"]).await;
        assert_eq!((rows, groups.len(), all.num_rows()), (0, 0, 0));
    }
}
