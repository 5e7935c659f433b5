//! Parquet input for `ingest`: each row becomes a JSON object with one entry per column, typed
//! as PIPELINE.md §1 says — integers as Int, floats as Float, booleans, strings, timestamps as
//! canonical timestamp text (a timestamp without a zone read as UTC), structs as objects,
//! lists as arrays, nulls as null.

use std::fs::File;
use std::path::Path;

use defacto_core::value::{instant_from_nanos, timestamp_text};
use deltalake::arrow::array::{Array, ArrayRef, AsArray};
use deltalake::arrow::datatypes::{DataType, TimeUnit};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Number, Value as Json};

use crate::error::{Error, Result};
use crate::jobs::ingest::{Record, Records};

/// The records of a Parquet file, read one row group at a time.
pub fn parquet_records(path: &Path) -> Result<Records> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|e| Error::Ingest(format!("{shown}: cannot read: {e}")))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| Error::Ingest(format!("{shown}: not a readable Parquet file: {e}")))?;
    Ok(Box::new(reader.flat_map(move |batch| {
        let rows = batch
            .map_err(|e| Error::Ingest(format!("{shown}: cannot read a row group: {e}")))
            .and_then(|b| batch_to_records(&b, &shown));
        match rows {
            Ok(rows) => rows.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        }
    })))
}

fn batch_to_records(batch: &RecordBatch, shown: &str) -> Result<Vec<Record>> {
    let schema = batch.schema();
    let mut rows = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut obj = Map::new();
        for (field, col) in schema.fields().iter().zip(batch.columns()) {
            obj.insert(
                field.name().clone(),
                cell(col, i).map_err(|e| {
                    Error::Ingest(format!("{shown}: column '{}': {e}", field.name()))
                })?,
            );
        }
        rows.push(Record::Ok(Json::Object(obj).to_string()));
    }
    Ok(rows)
}

fn float(f: f64) -> Json {
    Number::from_f64(f).map_or(Json::Null, Json::Number)
}

fn cell(col: &ArrayRef, i: usize) -> std::result::Result<Json, String> {
    use deltalake::arrow::datatypes as t;
    if col.is_null(i) {
        return Ok(Json::Null);
    }
    Ok(match col.data_type() {
        DataType::Boolean => Json::Bool(col.as_boolean().value(i)),
        DataType::Int8 => Json::from(col.as_primitive::<t::Int8Type>().value(i)),
        DataType::Int16 => Json::from(col.as_primitive::<t::Int16Type>().value(i)),
        DataType::Int32 => Json::from(col.as_primitive::<t::Int32Type>().value(i)),
        DataType::Int64 => Json::from(col.as_primitive::<t::Int64Type>().value(i)),
        DataType::UInt8 => Json::from(col.as_primitive::<t::UInt8Type>().value(i)),
        DataType::UInt16 => Json::from(col.as_primitive::<t::UInt16Type>().value(i)),
        DataType::UInt32 => Json::from(col.as_primitive::<t::UInt32Type>().value(i)),
        DataType::UInt64 => Json::from(col.as_primitive::<t::UInt64Type>().value(i)),
        DataType::Float32 => float(col.as_primitive::<t::Float32Type>().value(i) as f64),
        DataType::Float64 => float(col.as_primitive::<t::Float64Type>().value(i)),
        DataType::Utf8 => Json::String(col.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Json::String(col.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Json::String(col.as_string_view().value(i).to_string()),
        DataType::Timestamp(unit, _) => {
            let v = match unit {
                TimeUnit::Second => {
                    col.as_primitive::<t::TimestampSecondType>().value(i) as i128 * 1_000_000_000
                }
                TimeUnit::Millisecond => {
                    col.as_primitive::<t::TimestampMillisecondType>().value(i) as i128 * 1_000_000
                }
                TimeUnit::Microsecond => {
                    col.as_primitive::<t::TimestampMicrosecondType>().value(i) as i128 * 1_000
                }
                TimeUnit::Nanosecond => {
                    col.as_primitive::<t::TimestampNanosecondType>().value(i) as i128
                }
            };
            let at = instant_from_nanos(v).ok_or("timestamp out of range")?;
            Json::String(timestamp_text(&at))
        }
        DataType::Date32 => {
            let days = col.as_primitive::<t::Date32Type>().value(i) as i128;
            let at =
                instant_from_nanos(days * 86_400 * 1_000_000_000).ok_or("date out of range")?;
            Json::String(at.format("%Y-%m-%d").to_string())
        }
        DataType::Struct(fields) => {
            let s = col.as_struct();
            let mut obj = Map::new();
            for (f, c) in fields.iter().zip(s.columns()) {
                obj.insert(f.name().clone(), cell(c, i)?);
            }
            Json::Object(obj)
        }
        DataType::List(_) => {
            let values = col.as_list::<i32>().value(i);
            Json::Array(
                (0..values.len())
                    .map(|j| cell(&values, j))
                    .collect::<std::result::Result<_, _>>()?,
            )
        }
        DataType::LargeList(_) => {
            let values = col.as_list::<i64>().value(i);
            Json::Array(
                (0..values.len())
                    .map(|j| cell(&values, j))
                    .collect::<std::result::Result<_, _>>()?,
            )
        }
        other => {
            let text = deltalake::arrow::util::display::array_value_to_string(col, i)
                .map_err(|e| format!("cannot read a {other} value: {e}"))?;
            Json::String(text)
        }
    })
}
