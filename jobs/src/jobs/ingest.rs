//! `defacto ingest --source NAME FILE...`: appends records, exactly as read, to `ledger/raw`
//! in one Delta commit, under one contiguous range of ledger sequences (PIPELINE.md §1). A
//! file that cannot be read at all is rejected whole, naming the file and the line; a
//! malformed record inside an otherwise good file goes to the dead letters and the rest of
//! the call proceeds.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Args;
use defacto_core::results::EventFailure;
use defacto_core::value::{timestamp_text, Instant};
use serde::Serialize;
use serde_json::Value as Json;

use crate::cli::Global;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::lake::tables;
use crate::ledger::{raw_batch, RawRecord};

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The source the records come from (a source of the definitions).
    #[arg(long)]
    pub source: String,
    /// JSON lines, a JSON array, CSV or Parquet files; '-' reads standard input.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// What `ingest` appended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestCallResult {
    pub source: String,
    pub records: u64,
    pub first_sequence: Option<i64>,
    pub last_sequence: Option<i64>,
    /// Records that could not be read (malformed lines), sent to the dead letters.
    pub malformed: u64,
    pub failures: Vec<EventFailure>,
}

/// One record as read: its JSON, or why it could not be read.
pub enum Record {
    Ok(Json),
    Malformed { raw: Json, error: String },
}

pub async fn run(global: &Global, args: &IngestArgs) -> Result<i32> {
    let ctx = Context::open(global, "ingest", None).await?;
    let outcome = async {
        if !ctx.defs.sources.contains_key(&args.source) {
            return Err(Error::NotFound(format!(
                "Source '{}' not found in definitions (known: {})",
                args.source,
                ctx.defs
                    .sources
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut records = Vec::new();
        for file in &args.files {
            records.extend(read_file(file)?);
        }
        append(&ctx, &args.source, records).await
    };
    ctx.conclude(outcome.await).await?;
    Ok(0)
}

/// Appends one call's records under the sequence lock; malformed ones become dead letters.
pub async fn append(ctx: &Context, source: &str, records: Vec<Record>) -> Result<IngestCallResult> {
    let mut result = IngestCallResult {
        source: source.to_string(),
        ..Default::default()
    };
    let mut good = Vec::new();
    let mut failures = Vec::new();
    for r in records {
        match r {
            Record::Ok(json) => good.push(json),
            Record::Malformed { raw, error } => {
                failures.push(EventFailure::normalization(&raw, source, None, None, error))
            }
        }
    }
    let at = chrono::Utc::now();
    if !good.is_empty() {
        let (first, last) = commit_raw(ctx, source, &good, at).await?;
        result.first_sequence = Some(first);
        result.last_sequence = Some(last);
        result.records = good.len() as u64;
    }
    let failures_with_seq: Vec<(Option<i64>, EventFailure)> =
        failures.iter().map(|f| (None, f.clone())).collect();
    ctx.dead_letters(&failures_with_seq).await?;
    result.malformed = failures.len() as u64;
    result.failures = failures;
    Ok(result)
}

/// The sequence lock (PIPELINE.md §1): taken, waited for, around allocation and the commit,
/// so that commits to `ledger/raw` become visible in sequence order.
pub const SEQUENCE_LOCK: &str = "sequence";

async fn commit_raw(ctx: &Context, source: &str, good: &[Json], at: Instant) -> Result<(i64, i64)> {
    ctx.wait_for_lease(SEQUENCE_LOCK).await?;
    let outcome = async {
        let first = ctx.catalog.allocate_sequences(good.len() as i64).await?;
        let rows: Vec<RawRecord> = good
            .iter()
            .enumerate()
            .map(|(i, json)| RawRecord {
                sequence: first + i as i64,
                call: first,
                source: source.to_string(),
                raw: json.to_string(),
            })
            .collect();
        let batch_id = format!("{first}-{}", timestamp_text(&at));
        let batches = rows
            .chunks(65_536)
            .map(|chunk| raw_batch(chunk, &batch_id, at))
            .collect::<Result<Vec<_>>>()?;
        ctx.lake.append(tables::RAW, batches).await?;
        Ok((first, first + good.len() as i64 - 1))
    }
    .await;
    ctx.release_lease(SEQUENCE_LOCK).await?;
    outcome
}

/// Reads one file (or standard input for `-`) into records, by its extension.
pub fn read_file(path: &Path) -> Result<Vec<Record>> {
    let shown = path.display().to_string();
    if shown == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Error::Ingest(format!("cannot read standard input: {e}")))?;
        return if text.trim_start().starts_with('[') {
            read_json_array(&text, "<stdin>")
        } else {
            Ok(read_json_lines(&text))
        };
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jsonl" | "ndjson" => Ok(read_json_lines(&read_text(path)?)),
        "json" => {
            let text = read_text(path)?;
            if text.trim_start().starts_with('[') {
                read_json_array(&text, &shown)
            } else {
                Ok(read_json_lines(&text))
            }
        }
        "csv" => read_csv(path),
        "parquet" => crate::parquet_input::read_parquet(path),
        _ => Err(Error::Ingest(format!(
            "{shown}: unknown file format '{ext}' (use .jsonl, .json, .csv or .parquet)"
        ))),
    }
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Ingest(format!("{}: cannot read: {e}", path.display())))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        Error::Ingest(format!(
            "{}: line {line}: the file is not valid UTF-8 (byte {at})",
            path.display()
        ))
    })
}

/// JSON lines: one object per non-empty line; a line that is not a JSON object is a
/// malformed record (a dead letter), the others proceed.
pub fn read_json_lines(text: &str) -> Vec<Record> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| match serde_json::from_str::<Json>(line) {
            Ok(v @ Json::Object(_)) => Record::Ok(v),
            Ok(other) => Record::Malformed {
                raw: other,
                error: format!("line {}: a record must be a JSON object", i + 1),
            },
            Err(e) => Record::Malformed {
                raw: Json::String(line.to_string()),
                error: format!("line {}: malformed JSON: {e}", i + 1),
            },
        })
        .collect()
}

fn read_json_array(text: &str, shown: &str) -> Result<Vec<Record>> {
    let value: Json = serde_json::from_str(text).map_err(|e| {
        Error::Ingest(format!(
            "{shown}: line {}, column {}: malformed JSON: {e}",
            e.line(),
            e.column()
        ))
    })?;
    let Json::Array(items) = value else {
        return Err(Error::Ingest(format!(
            "{shown}: expected a JSON array of records"
        )));
    };
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Json::Object(_) => Record::Ok(v),
            other => Record::Malformed {
                raw: other,
                error: format!("element {i}: a record must be a JSON object"),
            },
        })
        .collect())
}

/// CSV with a header row: every cell is a String, an empty cell is null (PIPELINE.md §1).
fn read_csv(path: &Path) -> Result<Vec<Record>> {
    let shown = path.display().to_string();
    let text = read_text(path)?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| Error::Ingest(format!("{shown}: line 1: cannot read the header row: {e}")))?
        .clone();
    let mut out = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let line = i + 2;
        match row {
            Ok(row) if row.len() != headers.len() => out.push(Record::Malformed {
                raw: Json::Array(row.iter().map(|c| Json::String(c.to_string())).collect()),
                error: format!(
                    "line {line}: {} cells for {} columns",
                    row.len(),
                    headers.len()
                ),
            }),
            Ok(row) => {
                let obj = headers
                    .iter()
                    .zip(row.iter())
                    .map(|(h, c)| {
                        let v = if c.is_empty() {
                            Json::Null
                        } else {
                            Json::String(c.to_string())
                        };
                        (h.to_string(), v)
                    })
                    .collect();
                out.push(Record::Ok(Json::Object(obj)));
            }
            Err(e) => out.push(Record::Malformed {
                raw: Json::Null,
                error: format!("line {line}: {e}"),
            }),
        }
    }
    Ok(out)
}
