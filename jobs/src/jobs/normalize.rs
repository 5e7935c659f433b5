//! `defacto normalize [--from-raw]`: raw records above the cursor become normalized events in
//! `ledger/events` (deduplicated call by call against the whole ledger), failures go to the
//! dead letters, and the cursor moves to the highest sequence processed (PIPELINE.md §1, §2).
//! `--from-raw` renormalizes every raw record and replaces `ledger/events` in one commit.

use std::collections::{BTreeMap, HashSet};

use clap::Args;
use defacto_core::normalize::{normalize_call_kept, Kept, NormalizedEvent, Normalizer};
use defacto_core::results::{EventFailure, IngestResult};
use deltalake::arrow::array::RecordBatch;
use futures::TryStreamExt;

use crate::catalog::NORMALIZE_CURSOR;
use crate::cli::Global;
use crate::context::{Context, GLOBAL_LEASE};
use crate::error::{Error, Result};
use crate::lake::tables;
use crate::ledger::{
    events_batch, read_raw, Columns, RawRecord, EVENTS_SCHEMA, RAW_SCHEMA, REDACTIONS_SCHEMA,
};

#[derive(Debug, Args)]
pub struct NormalizeArgs {
    /// Renormalize every raw record with the current sources, replacing ledger/events.
    #[arg(long)]
    pub from_raw: bool,
    /// Exit with status 3 when more records than this fail.
    #[arg(long)]
    pub max_failures: Option<u64>,
}

pub async fn run(global: &Global, args: &NormalizeArgs) -> Result<i32> {
    let ctx = Context::open(global, "normalize", None).await?;
    let outcome = async {
        ctx.lease(GLOBAL_LEASE).await?;
        if args.from_raw {
            renormalize(&ctx).await
        } else {
            normalize_pending(&ctx).await
        }
    };
    let result = ctx.conclude(outcome.await).await?;
    Ok(crate::cli::exit_status(
        result.events_failed,
        args.max_failures,
    ))
}

/// Normalizes the raw records with sequence in `(after, ..]` as they are read, in sequence
/// order: each time a chunk's worth (`CHUNK`) is waiting, every whole call among them is
/// normalized into ledger batches (the last call read may go on in the next batch), so raw
/// records are never all held at once. Returns the batches, the failures, and the highest
/// sequence read (`after` when there was none).
async fn normalize_raw(
    ctx: &Context,
    after: i64,
    known: &mut HashSet<String>,
    kept: &BTreeMap<i64, Kept>,
    result: &mut IngestResult,
) -> Result<(Vec<RecordBatch>, Failed, i64)> {
    let sql = format!(
        "SELECT sequence, call, source, raw FROM raw WHERE sequence > {after} ORDER BY sequence"
    );
    let mut stream = ctx
        .lake
        .query(&[("raw", tables::RAW, RAW_SCHEMA.clone())], &sql)
        .await?;
    let (mut batches, mut failures) = (Vec::new(), Vec::new());
    let mut pending: Vec<RawRecord> = Vec::new();
    let mut head = after;
    loop {
        let next = stream
            .try_next()
            .await
            .map_err(|e| Error::Storage(format!("Reading ledger/raw failed: {e}")))?;
        let done = next.is_none();
        if let Some(batch) = next {
            pending.extend(read_raw(&batch)?);
        }
        let ready = ready_to_normalize(&pending, done, CHUNK);
        if ready > 0 {
            let rest = pending.split_off(ready);
            head = head.max(pending[ready - 1].sequence);
            let (mut b, mut f) = normalize_to_batches(ctx, &pending, known, kept, result)?;
            batches.append(&mut b);
            failures.append(&mut f);
            pending = rest;
        }
        if done {
            return Ok((batches, failures, head));
        }
    }
}

/// How many of the `pending` raw records (in sequence order) to normalize now: all of them
/// at the end of the input, else once `chunk` are waiting every whole call among them (the
/// last call read may continue in the next batch), else none.
fn ready_to_normalize(pending: &[RawRecord], done: bool, chunk: usize) -> usize {
    match pending.last() {
        Some(_) if done => pending.len(),
        Some(last) if pending.len() >= chunk => pending
            .iter()
            .rposition(|r| r.call != last.call)
            .map_or(0, |i| i + 1),
        _ => 0,
    }
}

/// The event ids of the canonical ledger rows, and the highest sequence in the ledger.
async fn known_events(ctx: &Context) -> Result<(HashSet<String>, i64)> {
    let batches = ctx
        .lake
        .query_all(
            &[("events", tables::EVENTS, EVENTS_SCHEMA.clone())],
            "SELECT event_id, sequence FROM events",
        )
        .await?;
    let mut ids = HashSet::new();
    let mut max = 0;
    for b in &batches {
        let c = Columns::new(b);
        let (id, seq) = (c.str("event_id")?, c.i64("sequence")?);
        for i in 0..b.num_rows() {
            ids.insert(id.value(i).to_string());
            max = max.max(seq.value(i));
        }
    }
    Ok((ids, max))
}

/// Failures with the sequence of their raw record (none for an unreadable record).
pub type Failed = Vec<(Option<i64>, EventFailure)>;

/// Accepted events by sequence, and failures with the sequence of their raw record.
pub type Normalized = (Vec<(i64, NormalizedEvent)>, Failed);

/// Normalizes raw records call by call, deduplicating against `known` (which grows).
pub fn normalize_calls(
    ctx: &Context,
    records: &[RawRecord],
    known: &mut HashSet<String>,
    kept: &BTreeMap<i64, Kept>,
    result: &mut IngestResult,
) -> Normalized {
    let normalizer = Normalizer::new(&ctx.defs, ctx.as_of);
    let mut accepted = Vec::new();
    let mut failures = Vec::new();
    let mut start = 0;
    while start < records.len() {
        let call = records[start].call;
        let end = start
            + records[start..]
                .iter()
                .take_while(|r| r.call == call)
                .count();
        // Raw text is parsed one record at a time, as normalization consumes it.
        let mut unreadable = Vec::new();
        let parsed = records[start..end].iter().filter_map(|r| {
            match serde_json::from_str::<serde_json::Value>(&r.raw) {
                Ok(raw) => Some((r.sequence, r.source.as_str(), raw)),
                Err(e) => {
                    unreadable.push((
                        Some(r.sequence),
                        EventFailure::normalization(
                            &serde_json::Value::String(r.raw.clone()),
                            &r.source,
                            None,
                            None,
                            format!("the raw record is not JSON: {e}"),
                        ),
                    ));
                    None
                }
            }
        });
        let call = normalize_call_kept(
            &normalizer,
            parsed,
            |id| known.contains(id),
            |s| kept.get(&s),
        );
        failures.append(&mut unreadable);
        failures.extend(call.failures.into_iter().map(|(s, f)| (Some(s), f)));
        result.duplicates_skipped += call.duplicate_ids.len() as u64;
        result.duplicate_ids.extend(call.duplicate_ids);
        for (seq, e) in call.accepted {
            known.insert(e.event_id.clone());
            accepted.push((seq, e));
        }
        start = end;
    }
    accepted.sort_by_key(|(s, _)| *s);
    failures.sort_by_key(|(s, _)| *s);
    result.events_ingested += accepted.len() as u64;
    result
        .failures
        .extend(failures.iter().map(|(_, f)| f.clone()));
    result.events_failed = result.failures.len() as u64;
    (accepted, failures)
}

pub async fn normalize_pending(ctx: &Context) -> Result<IngestResult> {
    let (mut known, ledger_head) = known_events(ctx).await?;
    // A run that committed its events but died before moving the cursor left the cursor
    // behind the ledger: sequences already in ledger/events are never appended again.
    let cursor = ctx
        .catalog
        .counter(NORMALIZE_CURSOR)
        .await?
        .max(ledger_head);
    let mut result = IngestResult::default();
    let (batches, failures, head) =
        normalize_raw(ctx, cursor, &mut known, &BTreeMap::new(), &mut result).await?;
    if head == cursor {
        return Ok(result);
    }
    write_batches(ctx, batches, false).await?;
    write_dead_letters(ctx, &failures).await?;
    ctx.catalog.set_counter(NORMALIZE_CURSOR, head).await?;
    Ok(result)
}

/// FULL_RENORMALIZE's ledger part (PIPELINE.md §10.7 steps 1–3) from the raw records; the
/// events table is replaced in one commit. Returns the failures.
pub async fn renormalize(ctx: &Context) -> Result<IngestResult> {
    let kept = kept_entries(ctx).await?;
    let mut known = HashSet::new();
    let mut result = IngestResult::default();
    let (batches, failures, head) = normalize_raw(ctx, 0, &mut known, &kept, &mut result).await?;
    write_batches(ctx, batches, true).await?;
    write_dead_letters(ctx, &failures).await?;
    ctx.catalog.set_counter(NORMALIZE_CURSOR, head).await?;
    Ok(result)
}

/// The `Kept` entries of redacted rows (`ledger/redactions`), by sequence.
pub async fn kept_entries(ctx: &Context) -> Result<BTreeMap<i64, Kept>> {
    let rows = ctx
        .lake
        .query_map(
            &[("k", tables::REDACTIONS, REDACTIONS_SCHEMA.clone())],
            "SELECT sequence, kept FROM k",
            |b| {
                let c = Columns::new(b);
                let (seq, kept) = (c.i64("sequence")?, c.str("kept")?);
                (0..b.num_rows())
                    .map(|i| {
                        serde_json::from_str(kept.value(i))
                            .map(|k| (seq.value(i), k))
                            .map_err(|e| {
                                crate::error::Error::Storage(format!(
                                    "Reading ledger/redactions failed: {e}"
                                ))
                            })
                    })
                    .collect()
            },
        )
        .await?;
    Ok(rows.into_iter().collect())
}

/// Rows per ledger batch, and about the number of raw records normalized before their events
/// are turned into one (the normalized events themselves, maps of typed values, take several
/// times the room of their Arrow rows).
const CHUNK: usize = 65_536;

/// Normalizes `records` (sorted by sequence) call by call, in chunks of whole calls of about
/// `CHUNK` records, each chunk's accepted events turned into a ledger batch at once.
pub fn normalize_to_batches(
    ctx: &Context,
    records: &[RawRecord],
    known: &mut HashSet<String>,
    kept: &BTreeMap<i64, Kept>,
    result: &mut IngestResult,
) -> Result<(Vec<RecordBatch>, Failed)> {
    let mut batches = Vec::new();
    let mut failures = Vec::new();
    let mut start = 0;
    while start < records.len() {
        let mut end = (start + CHUNK).min(records.len());
        // A call is normalized whole (duplicates within it are found together).
        while end < records.len() && records[end].call == records[end - 1].call {
            end += 1;
        }
        let (accepted, mut failed) =
            normalize_calls(ctx, &records[start..end], known, kept, result);
        failures.append(&mut failed);
        let rows: Vec<(i64, &NormalizedEvent)> = accepted.iter().map(|(s, e)| (*s, e)).collect();
        if !rows.is_empty() {
            batches.push(events_batch(&rows)?);
        }
        start = end;
    }
    Ok((batches, failures))
}

/// Appends events to `ledger/events` in one commit.
pub async fn write_events(ctx: &Context, accepted: &[(i64, NormalizedEvent)]) -> Result<()> {
    let rows: Vec<(i64, &NormalizedEvent)> = accepted.iter().map(|(s, e)| (*s, e)).collect();
    let batches = rows
        .chunks(CHUNK)
        .map(events_batch)
        .collect::<Result<Vec<_>>>()?;
    write_batches(ctx, batches, false).await
}

/// Appends ledger batches to `ledger/events` in one commit, or replaces the whole table with
/// them (`--from-raw`).
async fn write_batches(ctx: &Context, batches: Vec<RecordBatch>, replace: bool) -> Result<()> {
    if replace {
        let batches = if batches.is_empty() {
            vec![events_batch(&[])?]
        } else {
            batches
        };
        ctx.lake.overwrite(tables::EVENTS, batches).await
    } else if batches.is_empty() {
        Ok(())
    } else {
        ctx.lake.append(tables::EVENTS, batches).await
    }
}

pub async fn write_dead_letters(
    ctx: &Context,
    failures: &[(Option<i64>, EventFailure)],
) -> Result<()> {
    ctx.dead_letters(failures).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(calls: &[i64]) -> Vec<RawRecord> {
        calls
            .iter()
            .enumerate()
            .map(|(i, call)| RawRecord {
                sequence: i as i64 + 1,
                call: *call,
                source: "app".into(),
                raw: "{}".into(),
            })
            .collect()
    }

    #[test]
    fn whole_calls_are_normalized_once_a_chunk_is_waiting() {
        let pending = records(&[1, 1, 2, 2, 2]);
        // Fewer than a chunk: wait for more.
        assert_eq!(ready_to_normalize(&pending, false, 6), 0);
        // A chunk: every call but the last, which may go on in the next batch.
        assert_eq!(ready_to_normalize(&pending, false, 5), 2);
        assert_eq!(ready_to_normalize(&pending, false, 3), 2);
        // One call longer than a chunk waits for its end.
        assert_eq!(ready_to_normalize(&records(&[7, 7, 7]), false, 2), 0);
        // The end of the input: everything.
        assert_eq!(ready_to_normalize(&pending, true, 100), 5);
        assert_eq!(ready_to_normalize(&[], true, 100), 0);
    }
}
