//! Writing results: a job's human-readable report or its result JSON on stdout, and the same
//! JSON in `--result-file` (Airflow reads `/airflow/xcom/return.json`).

use std::cell::RefCell;
use std::io::{self, Write};
use std::path::Path;

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
            {
                let mut w = deltalake::arrow::csv::WriterBuilder::new()
                    .with_timestamp_tz_format(CSV_TIMESTAMP.into())
                    .build(&mut buf);
                for b in batches {
                    w.write(b).map_err(failed)?;
                }
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
