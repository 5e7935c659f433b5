//! Writing results: a job's human-readable report or its result JSON on stdout, and the same
//! JSON in `--result-file` (Airflow reads `/airflow/xcom/return.json`).

use std::cell::RefCell;
use std::io::{self, Write};
use std::path::Path;

use std::sync::Arc;

use defacto_core::value::{instant_from_nanos, timestamp_text};
use deltalake::arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use deltalake::arrow::error::ArrowError;
use serde::Serialize;

use crate::error::Result;

/// What a job printed while `capture` ran it (the in-process API, `crate::api`): its stdout,
/// and — when asked for — the record batches `render` was given instead of their text.
#[derive(Debug, Default)]
pub struct Captured {
    pub stdout: Vec<u8>,
    pub batches: Option<Vec<deltalake::arrow::record_batch::RecordBatch>>,
}

thread_local! {
    static CAPTURE: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's `print` going to a buffer instead of stdout; with
/// `keep_batches`, `render` keeps the batches and renders nothing. Jobs print from the future
/// that `block_on` polls on the calling thread, so a thread-local buffer sees all of it.
pub fn capture<T>(keep_batches: bool, f: impl FnOnce() -> T) -> (T, Captured) {
    let fresh = Captured {
        stdout: Vec::new(),
        batches: keep_batches.then(Vec::new),
    };
    let outer = CAPTURE.with(|c| c.replace(Some(fresh)));
    let value = f();
    let captured = CAPTURE.with(|c| c.replace(outer)).unwrap_or_default();
    (value, captured)
}

/// Writes lines to stdout. A closed pipe (`defacto validate | head`) is not an error.
pub fn print(text: &str) -> Result<()> {
    let captured = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
        Some(buf) => {
            buf.stdout.extend_from_slice(text.as_bytes());
            true
        }
        None => false,
    });
    if captured {
        return Ok(());
    }
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Result JSON, pretty-printed for stdout.
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("results serialize") + "\n"
}

/// Writes the result JSON to `--result-file` when one is set, creating its folder.
pub fn write_result_file<T: Serialize>(path: Option<&Path>, value: &T) -> Result<()> {
    if let Some(path) = path {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec(value).expect("results serialize"))?;
    }
    Ok(())
}

/// Record batches as JSON objects, one per row (null cells absent).
pub fn json_rows(
    batches: &[deltalake::arrow::record_batch::RecordBatch],
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    let mut buf = Vec::new();
    {
        let mut writer = deltalake::arrow::json::ArrayWriter::new(&mut buf);
        for batch in batches {
            writer
                .write(batch)
                .map_err(|e| crate::error::Error::Query(e.to_string()))?;
        }
        writer
            .finish()
            .map_err(|e| crate::error::Error::Query(e.to_string()))?;
    }
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&buf).map_err(|e| crate::error::Error::Query(e.to_string()))
}

/// How `table` and `query` print rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RowFormat {
    /// An aligned text table.
    #[default]
    Table,
    /// CSV with a header; timestamps as RFC 3339 text.
    Csv,
    /// A JSON array of objects (null cells absent).
    Json,
}

/// Rows as text in `format`.
pub fn render(
    batches: &[deltalake::arrow::record_batch::RecordBatch],
    format: RowFormat,
) -> Result<String> {
    let kept = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
        Some(Captured {
            batches: Some(kept),
            ..
        }) => {
            kept.extend(batches.iter().cloned());
            true
        }
        _ => false,
    });
    if kept {
        return Ok(String::new());
    }
    let failed = |e: deltalake::arrow::error::ArrowError| crate::error::Error::Query(e.to_string());
    Ok(match format {
        RowFormat::Table => {
            deltalake::arrow::util::pretty::pretty_format_batches(batches)
                .map_err(failed)?
                .to_string()
                + "\n"
        }
        RowFormat::Csv => {
            let mut buf = Vec::new();
            for (i, b) in batches.iter().enumerate() {
                write_csv(b, i == 0, &mut buf).map_err(failed)?;
            }
            String::from_utf8_lossy(&buf).into_owned()
        }
        RowFormat::Json => {
            serde_json::to_string(&json_rows(batches)?).expect("rows serialize") + "\n"
        }
    })
}

/// The chrono format of timestamps in CSV: the canonical RFC 3339 text of the spec.
pub const CSV_TIMESTAMP: &str = "%Y-%m-%dT%H:%M:%S%.f%:z";

/// Appends a batch as CSV to `out`, after a header line when `header`. UTC timestamps come out
/// as the spec's canonical text (`CSV_TIMESTAMP`, which `timestamp_text` writes); they are
/// turned into text here, a column at a time, because the CSV writer formats each cell by
/// parsing its format string again — several times the cost of the rest of `table --as-of`.
pub fn write_csv(batch: &RecordBatch, header: bool, out: &mut Vec<u8>) -> Result<(), ArrowError> {
    let batch = utc_timestamps_as_text(batch)?;
    deltalake::arrow::csv::WriterBuilder::new()
        .with_header(header)
        .with_timestamp_tz_format(CSV_TIMESTAMP.into())
        .build(out)
        .write(&batch)
}

/// The batch with its UTC timestamp columns as canonical text (others unchanged).
fn utc_timestamps_as_text(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let utc = |f: &Field| match f.data_type() {
        DataType::Timestamp(unit, Some(tz))
            if ["UTC", "+00:00", "Z", "Etc/UTC"].contains(&&**tz) =>
        {
            Some(match unit {
                TimeUnit::Second => 1_000_000_000i128,
                TimeUnit::Millisecond => 1_000_000,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1,
            })
        }
        _ => None,
    };
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| utc(f).is_some()) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (f, column) in schema.fields().iter().zip(batch.columns()) {
        match utc(f) {
            Some(nanos_per_unit) => {
                let raw = cast(column, &DataType::Int64)?;
                let text: StringArray = raw
                    .as_primitive::<Int64Type>()
                    .iter()
                    .map(|v| {
                        let t = v.and_then(|v| instant_from_nanos(v as i128 * nanos_per_unit));
                        t.map(|t| timestamp_text(&t))
                    })
                    .collect();
                fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
                columns.push(Arc::new(text) as ArrayRef);
            }
            None => {
                fields.push(f.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::TimestampMicrosecondArray;

    /// The text of a batch as the CSV writer formats it itself.
    fn writer_text(batch: &RecordBatch) -> String {
        let mut buf = Vec::new();
        deltalake::arrow::csv::WriterBuilder::new()
            .with_timestamp_tz_format(CSV_TIMESTAMP.into())
            .build(&mut buf)
            .write(batch)
            .unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn utc_timestamps_are_written_as_the_writer_would_only_faster() {
        let micros = [
            Some(0),
            Some(1_500),
            Some(1_700_000_000_123_456),
            None,
            Some(-86_400_000_001),
            Some(1_709_812_080_000_000),
        ];
        let utc = TimestampMicrosecondArray::from(micros.to_vec()).with_timezone("UTC");
        let paris = TimestampMicrosecondArray::from(micros.to_vec()).with_timezone("+01:00");
        let batch = RecordBatch::try_from_iter([
            ("at", Arc::new(utc) as ArrayRef),
            ("local", Arc::new(paris) as ArrayRef),
        ])
        .unwrap();
        let mut ours = Vec::new();
        write_csv(&batch, true, &mut ours).unwrap();
        let ours = String::from_utf8(ours).unwrap();
        assert_eq!(ours, writer_text(&batch));
        assert!(
            ours.contains("\n1970-01-01T00:00:00.001500+00:00,"),
            "{ours}"
        );
        assert!(
            ours.contains("\n1969-12-30T23:59:59.999999+00:00,"),
            "{ours}"
        );
        // A non-UTC zone keeps the writer's own formatting (its local time and offset).
        assert!(ours.contains(",1970-01-01T01:00:00+01:00\n"), "{ours}");
        let mut no_header = Vec::new();
        write_csv(&batch, false, &mut no_header).unwrap();
        assert!(String::from_utf8(no_header)
            .unwrap()
            .starts_with("1970-01-01T00:00:00+00:00,"));
    }
}
