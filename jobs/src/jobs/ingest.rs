//! `defacto ingest --source NAME FILE...`: appends records, exactly as read, to `ledger/raw`
//! in one Delta commit, under one contiguous range of ledger sequences (PIPELINE.md §1). A
//! file that cannot be read at all is rejected whole, naming the file and the line; a
//! malformed record inside an otherwise good file goes to the dead letters and the rest of
//! the call proceeds.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use clap::Args;
use defacto_core::results::EventFailure;
use defacto_core::value::timestamp_text;
use serde::Serialize;
use serde_json::Value as Json;

use crate::cli::Global;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::lake::{tables, TableWriter};
use crate::ledger::{raw_batch, RawRecord, RAW_SCHEMA};

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

/// One record as read: the JSON text of an object, or why it could not be read.
pub enum Record {
    Ok(String),
    Malformed { raw: Json, error: String },
}

/// The records of one input, read as they are consumed. An `Err` item means the input cannot
/// be read at all: the whole call is rejected.
pub type Records = Box<dyn Iterator<Item = Result<Record>>>;

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
        // Every input opens (and names its format) before anything is written.
        let inputs = args
            .files
            .iter()
            .map(|f| read_file(f))
            .collect::<Result<Vec<_>>>()?;
        append(&ctx, &args.source, inputs.into_iter().flatten()).await
    };
    ctx.conclude(outcome.await).await?;
    Ok(0)
}

/// Records per `ledger/raw` batch, and how often a long call renews its lock.
const CHUNK: usize = 65_536;

/// Appends one call's records to `ledger/raw` as they are read, in one commit under one
/// contiguous range of sequences; malformed records become dead letters. When an input turns
/// out to be unreadable part way, nothing is committed and the files written are deleted.
pub async fn append(
    ctx: &Context,
    source: &str,
    records: impl Iterator<Item = Result<Record>>,
) -> Result<IngestCallResult> {
    // The sequence lock (PIPELINE.md §1) is held from the first record to the commit: this
    // call's range starts where the counter stands and is taken, exactly as long as the
    // records turned out to be, just before the commit.
    ctx.wait_for_lease(SEQUENCE_LOCK).await?;
    let mut writer = ctx.lake.writer(tables::RAW, &RAW_SCHEMA);
    let outcome = match write_raw(ctx, source, records, &mut writer).await {
        Ok(result) => writer.append().await.map(|_| result),
        Err(e) => {
            // Best effort: what was written is unreferenced either way.
            let _ = writer.abort().await;
            Err(e)
        }
    };
    ctx.release_lease(SEQUENCE_LOCK).await?;
    let mut result = outcome?;
    let failures: Vec<(Option<i64>, EventFailure)> =
        result.failures.iter().map(|f| (None, f.clone())).collect();
    ctx.dead_letters(&failures).await?;
    result.malformed = failures.len() as u64;
    Ok(result)
}

/// Streams the good records into `writer` (under the sequence lock) and takes their
/// sequences; the caller commits.
async fn write_raw(
    ctx: &Context,
    source: &str,
    records: impl Iterator<Item = Result<Record>>,
    writer: &mut TableWriter,
) -> Result<IngestCallResult> {
    let mut result = IngestCallResult {
        source: source.to_string(),
        ..Default::default()
    };
    let at = chrono::Utc::now();
    let first = ctx.catalog.next_sequence().await?;
    let batch_id = format!("{first}-{}", timestamp_text(&at));
    let mut next = first;
    let mut pending: Vec<RawRecord> = Vec::with_capacity(CHUNK);
    for record in records {
        match record? {
            Record::Ok(raw) => {
                pending.push(RawRecord {
                    sequence: next,
                    call: first,
                    source: source.to_string(),
                    raw,
                });
                next += 1;
            }
            Record::Malformed { raw, error } => result
                .failures
                .push(EventFailure::normalization(&raw, source, None, None, error)),
        }
        if pending.len() == CHUNK {
            let batch = raw_batch(&pending, &batch_id, at)?;
            pending.clear();
            writer.write(batch).await?;
            ctx.renew_leases().await?;
        }
    }
    if !pending.is_empty() {
        let batch = raw_batch(&pending, &batch_id, at)?;
        writer.write(batch).await?;
    }
    let count = next - first;
    if count == 0 {
        return Ok(result);
    }
    let allocated = ctx.catalog.allocate_sequences(count).await?;
    if allocated != first {
        return Err(Error::Storage(format!(
            "ledger sequences moved while this call held the sequence lock (expected {first}, \
             got {allocated}); nothing was committed"
        )));
    }
    result.first_sequence = Some(first);
    result.last_sequence = Some(next - 1);
    result.records = count as u64;
    Ok(result)
}

/// The sequence lock (PIPELINE.md §1): taken, waited for, around allocation and the commit,
/// so that commits to `ledger/raw` become visible in sequence order.
pub const SEQUENCE_LOCK: &str = "sequence";

/// Opens one file (or standard input for `-`) as records, by its extension.
pub fn read_file(path: &Path) -> Result<Records> {
    let shown = path.display().to_string();
    if shown == "-" {
        let stdin = std::io::BufReader::new(std::io::stdin());
        return json_input(Box::new(stdin), "<stdin>".into());
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let open = || {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|e| Error::Ingest(format!("{shown}: cannot read: {e}")))
    };
    match ext.as_str() {
        "jsonl" | "ndjson" => Ok(Box::new(JsonLines::new(Box::new(open()?), shown))),
        "json" => json_input(Box::new(open()?), shown),
        "csv" => csv_records(open()?, shown),
        "parquet" => crate::parquet_input::parquet_records(path),
        _ => Err(Error::Ingest(format!(
            "{shown}: unknown file format '{ext}' (use .jsonl, .json, .csv or .parquet)"
        ))),
    }
}

/// JSON text that is either one array of records (read whole) or JSON lines (streamed),
/// told apart by its first character.
fn json_input(mut reader: Box<dyn BufRead>, shown: String) -> Result<Records> {
    let first = loop {
        let buf = reader
            .fill_buf()
            .map_err(|e| Error::Ingest(format!("{shown}: cannot read: {e}")))?;
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => break Some(buf[i]),
            None if buf.is_empty() => break None,
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    if first != Some(b'[') {
        return Ok(Box::new(JsonLines::new(reader, shown)));
    }
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Ingest(format!("{shown}: cannot read: {e}")))?;
    let text = utf8(&bytes, &shown, 0, 1)?;
    Ok(Box::new(read_json_array(text, &shown)?.into_iter().map(Ok)))
}

/// Text of `bytes`, or an error naming the line (counted from `line`) and byte (from
/// `offset`) where it stops being UTF-8.
fn utf8<'b>(bytes: &'b [u8], shown: &str, offset: usize, line: usize) -> Result<&'b str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        let line = line + bytes[..at].iter().filter(|b| **b == b'\n').count();
        Error::Ingest(format!(
            "{shown}: line {line}: the file is not valid UTF-8 (byte {})",
            offset + at
        ))
    })
}

/// JSON lines, read one line at a time: one object per non-empty line; a line that is not a
/// JSON object is a malformed record (a dead letter), the others proceed.
struct JsonLines {
    reader: Box<dyn BufRead>,
    shown: String,
    line: usize,
    offset: usize,
    buf: Vec<u8>,
    done: bool,
}

impl JsonLines {
    fn new(reader: Box<dyn BufRead>, shown: String) -> Self {
        JsonLines {
            reader,
            shown,
            line: 0,
            offset: 0,
            buf: Vec::new(),
            done: false,
        }
    }
}

impl Iterator for JsonLines {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        while !self.done {
            self.buf.clear();
            let n = match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    self.done = true;
                    return Some(Err(Error::Ingest(format!(
                        "{}: cannot read: {e}",
                        self.shown
                    ))));
                }
            };
            self.line += 1;
            let offset = self.offset;
            self.offset += n;
            let text = match utf8(&self.buf, &self.shown, offset, self.line) {
                Ok(t) => t.trim(),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            if !text.is_empty() {
                return Some(Ok(json_line(text, self.line)));
            }
        }
        self.done = true;
        None
    }
}

/// One line of JSON lines as a record. An object is kept exactly as written; anything else is
/// malformed.
pub fn json_line(text: &str, line: usize) -> Record {
    if text.starts_with('{') && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        return Record::Ok(text.to_string());
    }
    match serde_json::from_str::<Json>(text) {
        Ok(v @ Json::Object(_)) => Record::Ok(v.to_string()),
        Ok(other) => Record::Malformed {
            raw: other,
            error: format!("line {line}: a record must be a JSON object"),
        },
        Err(e) => Record::Malformed {
            raw: Json::String(text.to_string()),
            error: format!("line {line}: malformed JSON: {e}"),
        },
    }
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
            Json::Object(_) => Record::Ok(v.to_string()),
            other => Record::Malformed {
                raw: other,
                error: format!("element {i}: a record must be a JSON object"),
            },
        })
        .collect())
}

/// CSV with a header row, read row by row: every cell is a String, an empty cell is null
/// (PIPELINE.md §1). A row with the wrong number of cells is malformed; text that is not
/// UTF-8 rejects the file.
fn csv_records(input: impl Read + 'static, shown: String) -> Result<Records> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(input);
    let headers = reader
        .headers()
        .map_err(|e| csv_error(&shown, 1, e, "cannot read the header row"))?
        .clone();
    let mut failed = false;
    Ok(Box::new(reader.into_records().enumerate().map_while(
        move |(i, row)| {
            if failed {
                return None;
            }
            let line = i + 2;
            Some(match row {
                Ok(row) if row.len() != headers.len() => Ok(Record::Malformed {
                    raw: Json::Array(row.iter().map(|c| Json::String(c.to_string())).collect()),
                    error: format!(
                        "line {line}: {} cells for {} columns",
                        row.len(),
                        headers.len()
                    ),
                }),
                Ok(row) => {
                    let obj: serde_json::Map<String, Json> = headers
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
                    Ok(Record::Ok(Json::Object(obj).to_string()))
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        csv::ErrorKind::Utf8 { .. } | csv::ErrorKind::Io(_)
                    ) =>
                {
                    failed = true;
                    Err(csv_error(&shown, line, e, "cannot read"))
                }
                Err(e) => Ok(Record::Malformed {
                    raw: Json::Null,
                    error: format!("line {line}: {e}"),
                }),
            })
        },
    )))
}

fn csv_error(shown: &str, line: usize, e: csv::Error, what: &str) -> Error {
    let line = e.position().map_or(line, |p| p.line() as usize);
    match e.kind() {
        csv::ErrorKind::Utf8 { .. } => Error::Ingest(format!(
            "{shown}: line {line}: the file is not valid UTF-8 ({e})"
        )),
        _ => Error::Ingest(format!("{shown}: line {line}: {what}: {e}")),
    }
}
