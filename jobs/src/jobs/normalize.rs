//! `defacto normalize [--from-raw]`: raw records above the cursor become normalized events in
//! `ledger/events` (deduplicated call by call against the whole ledger), failures go to the
//! dead letters, and the cursor moves to the highest sequence processed (PIPELINE.md §1, §2).
//! `--from-raw` renormalizes every raw record and replaces `ledger/events` in one commit.

use std::collections::BTreeMap;

use clap::Args;
use defacto_core::dedup::{event_key, KeyMap, LedgerKeys, StreamDedup};
use defacto_core::normalize::{normalize_records, Kept, NormalizedEvent, Normalizer};
use defacto_core::results::{EventFailure, IngestResult};
use deltalake::arrow::array::RecordBatch;
use futures::TryStreamExt;
use rayon::prelude::*;

use crate::catalog::NORMALIZE_CURSOR;
use crate::cli::Global;
use crate::context::{Context, GLOBAL_LEASE};
use crate::error::{Error, Result};
use crate::lake::{tables, TableWriter};
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

/// Normalizes the raw records above the cursor (all of them when `replace`) into
/// `ledger/events` as they are read (PIPELINE.md §2), in chunks of `CHUNK` records normalized
/// in parallel and deduplicated as a stream, and commits them in one commit: appended, or
/// replacing the table (`replace`, with no ledger rows to deduplicate against). Then the dead
/// letters and the cursor. A call is never held whole: in the rare case that a later copy of
/// an id in one call has an earlier timestamp than the copy already written, the files
/// written are deleted and the run repeats with the winners known (`defacto_core::dedup`).
async fn normalize_stream(
    ctx: &Context,
    kept: &BTreeMap<i64, Kept>,
    replace: bool,
) -> Result<IngestResult> {
    let mut fixed = KeyMap::default();
    loop {
        // The last sequence handed out: raw records lie at or below it (gaps aside).
        let last = ctx.catalog.next_sequence().await? - 1;
        let (ledger, after) = if replace {
            (LedgerKeys::default(), 0)
        } else {
            let normalized = ctx.catalog.counter(NORMALIZE_CURSOR).await?;
            let pending = pending_keys(ctx, normalized, last, kept).await?;
            let (ids, head) = known_events(ctx, normalized, pending.as_ref()).await?;
            // A run that committed its events but died before moving the cursor left the
            // cursor behind the ledger: sequences already in ledger/events are never
            // appended again.
            (ids, normalized.max(head))
        };
        let mut dedup = StreamDedup::with_ledger(ledger, fixed.clone());
        // Sequences handed out above `after`: the raw records to come (gaps aside).
        dedup.reserve(usize::try_from(last - after).unwrap_or(0));
        let mut result = IngestResult::default();
        let mut writer = ctx.lake.writer(tables::EVENTS, &EVENTS_SCHEMA);
        let outcome = normalize_into(ctx, after, &mut dedup, kept, &mut result, &mut writer).await;
        let (failures, head) = match outcome {
            Ok(done) => done,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        };
        if !dedup.displaced().is_empty() {
            writer.abort().await?;
            // With the winners fixed, a second run displaces nothing (defacto_core::dedup).
            if !fixed.is_empty() {
                return Err(Error::Storage(
                    "deduplication did not settle on a second run".into(),
                ));
            }
            fixed.extend(dedup.displaced().iter().map(|(k, v)| (*k, *v)));
            continue;
        }
        if head == after && !replace {
            return Ok(result);
        }
        result.duplicate_ids = dedup.take_duplicates(true);
        result.duplicates_skipped = result.duplicate_ids.len() as u64;
        if replace {
            writer.replace().await?;
        } else {
            writer.append().await?;
        }
        write_dead_letters(ctx, &failures).await?;
        ctx.catalog.set_counter(NORMALIZE_CURSOR, head).await?;
        return Ok(result);
    }
}

/// The streaming part of `normalize_stream`: reads raw records in sequence order, normalizes
/// and deduplicates them chunk by chunk and writes the accepted events. Returns the failures
/// and the highest sequence read (`after` when there was none).
async fn normalize_into(
    ctx: &Context,
    after: i64,
    dedup: &mut StreamDedup,
    kept: &BTreeMap<i64, Kept>,
    result: &mut IngestResult,
    writer: &mut TableWriter,
) -> Result<(Failed, i64)> {
    let sql = format!(
        "SELECT sequence, call, source, raw FROM raw WHERE sequence > {after} ORDER BY sequence"
    );
    let mut stream = ctx
        .lake
        .query(&[("raw", tables::RAW, RAW_SCHEMA.clone())], &sql)
        .await?;
    let mut failures = Vec::new();
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
        if pending.len() >= CHUNK || (done && !pending.is_empty()) {
            head = head.max(pending[pending.len() - 1].sequence);
            let (batches, mut failed) = normalize_chunk(ctx, &pending, dedup, kept, result)?;
            pending.clear();
            failures.append(&mut failed);
            if !batches.is_empty() {
                for batch in batches {
                    writer.write(batch).await?;
                }
                ctx.renew_leases().await?;
            }
        }
        if done {
            return Ok((failures, head));
        }
    }
}

/// How many raw records an increment may hold for its event ids to be gathered in advance:
/// `CHUNK`, or an eighth of the ledger (`normalized` records) when that is more. Gathering
/// costs a normalize of the increment (about 0.8 us a record on two cores); not gathering
/// puts every ledger id into the dedup map instead (about 0.3 us an id, memory-bound: at
/// 10 M events half of a 1 % increment's `normalize`). An eighth keeps the wasted work of an
/// increment found too large small next to the run it precedes.
fn pending_limit(normalized: i64) -> usize {
    CHUNK.max(usize::try_from(normalized).unwrap_or(0) / 8)
}

/// The dedup keys of the events the raw records after `after` normalize to, when there are
/// at most `pending_limit(after)` of them (`None` beyond; `last` is the last sequence handed
/// out). An increment is normalized here once just for its ids — cheap next to the scan of
/// every ledger id — so that of the ledger's ids only those it can collide with are kept
/// (`known_events`).
async fn pending_keys(
    ctx: &Context,
    after: i64,
    last: i64,
    kept: &BTreeMap<i64, Kept>,
) -> Result<Option<KeyMap<()>>> {
    let limit = pending_limit(after);
    // The sequences handed out above `after` bound the records to come. Beyond the limit
    // nothing is read: a first normalize of a large ingest, say, would otherwise normalize
    // `CHUNK` records only to give up. (Sequences of a failed ingest are never used, so the
    // bound may exceed the count; such an increment only loses the gathering, not a result.)
    if usize::try_from(last - after).is_ok_and(|n| n > limit) {
        return Ok(None);
    }
    let sql = format!("SELECT sequence, call, source, raw FROM raw WHERE sequence > {after}");
    let mut stream = ctx
        .lake
        .query(&[("raw", tables::RAW, RAW_SCHEMA.clone())], &sql)
        .await?;
    let normalizer = Normalizer::new(&ctx.defs, ctx.as_of);
    let (mut keys, mut records) = (KeyMap::default(), 0);
    while let Some(batch) = stream
        .try_next()
        .await
        .map_err(|e| Error::Storage(format!("Reading ledger/raw failed: {e}")))?
    {
        let raw = read_raw(&batch)?;
        records += raw.len();
        if records > limit {
            return Ok(None);
        }
        let parts: Vec<Vec<u128>> = raw
            .par_chunks(TASK)
            .map(|part| {
                let (events, _) = normalize_part(&normalizer, part, kept);
                events.iter().map(|(_, e)| event_key(&e.event_id)).collect()
            })
            .collect();
        keys.extend(parts.into_iter().flatten().map(|key| (key, ())));
    }
    Ok(Some(keys))
}

/// The event ids (as dedup keys) and sequences of the canonical ledger rows — only those
/// among `pending` when given — and the highest sequence in the ledger. The keys go straight
/// from each batch into one map, sized up front (without `pending`, by the normalize cursor
/// `normalized`: at least one per ledger row), as a growing map would touch twice the memory.
async fn known_events(
    ctx: &Context,
    normalized: i64,
    pending: Option<&KeyMap<()>>,
) -> Result<(LedgerKeys, i64)> {
    let capacity = pending.map_or(normalized.max(0) as usize, |p| p.len());
    let mut keys = LedgerKeys::with_capacity_and_hasher(capacity, Default::default());
    let mut max = 0;
    let mut stream = ctx
        .lake
        .query(
            &[("events", tables::EVENTS, EVENTS_SCHEMA.clone())],
            "SELECT event_id, sequence FROM events",
        )
        .await?;
    while let Some(b) = stream
        .try_next()
        .await
        .map_err(|e| Error::Storage(format!("Reading ledger/events failed: {e}")))?
    {
        let c = Columns::new(&b);
        let (id, seq) = (c.str("event_id")?, c.i64("sequence")?);
        for i in 0..b.num_rows() {
            let s = seq.value(i);
            max = max.max(s);
            let key = event_key(id.value(i));
            if pending.is_none_or(|p| p.contains_key(&key)) {
                keys.insert(key, s);
            }
        }
    }
    Ok((keys, max))
}

/// Failures with the sequence of their raw record (none for an unreadable record).
pub type Failed = Vec<(Option<i64>, EventFailure)>;

/// Raw records normalized per rayon task.
const TASK: usize = 4_096;

/// Normalizes a chunk of raw records (in sequence order; calls may continue across chunks)
/// in parallel, deduplicates the events in order, and returns the accepted ones as ledger
/// batches (none when none were accepted) with the failures, in sequence order.
fn normalize_chunk(
    ctx: &Context,
    records: &[RawRecord],
    dedup: &mut StreamDedup,
    kept: &BTreeMap<i64, Kept>,
    result: &mut IngestResult,
) -> Result<(Vec<RecordBatch>, Failed)> {
    let normalizer = Normalizer::new(&ctx.defs, ctx.as_of);
    let parts: Vec<(Vec<(i64, NormalizedEvent)>, Failed)> = records
        .par_chunks(TASK)
        .map(|part| normalize_part(&normalizer, part, kept))
        .collect();
    let mut accepted = Vec::new();
    let mut failures = Vec::new();
    let mut at = 0;
    for (events, mut failed) in parts {
        failures.append(&mut failed);
        for (sequence, e) in events {
            // Records are in sequence order: the event's call is found by walking forward.
            while records[at].sequence < sequence {
                at += 1;
            }
            if dedup.offer(records[at].call, sequence, &e.event_id, &e.timestamp) {
                accepted.push((sequence, e));
            }
        }
    }
    failures.sort_by_key(|(s, _)| *s);
    result.events_ingested += accepted.len() as u64;
    result
        .failures
        .extend(failures.iter().map(|(_, f)| f.clone()));
    result.events_failed = result.failures.len() as u64;
    // The accepted events become ledger batches in parallel, and are freed off this thread.
    let batches = accepted
        .par_chunks(TASK)
        .map(|part| {
            let rows: Vec<(i64, &NormalizedEvent)> = part.iter().map(|(s, e)| (*s, e)).collect();
            events_batch(&rows)
        })
        .collect::<Result<Vec<_>>>()?;
    rayon::spawn(move || drop(accepted));
    Ok((batches, failures))
}

/// Parses and normalizes raw records without deduplicating them.
fn normalize_part(
    normalizer: &Normalizer<'_>,
    records: &[RawRecord],
    kept: &BTreeMap<i64, Kept>,
) -> (Vec<(i64, NormalizedEvent)>, Failed) {
    // Raw text is parsed one record at a time, as normalization consumes it.
    let mut unreadable = Vec::new();
    let parsed =
        records.iter().filter_map(
            |r| match serde_json::from_str::<serde_json::Value>(&r.raw) {
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
            },
        );
    let (events, failed) = normalize_records(normalizer, parsed, |s| kept.get(&s));
    unreadable.extend(failed.into_iter().map(|(s, f)| (Some(s), f)));
    (events, unreadable)
}

/// Normalizes the raw records above the cursor, appending to `ledger/events`.
pub async fn normalize_pending(ctx: &Context) -> Result<IngestResult> {
    normalize_stream(ctx, &BTreeMap::new(), false).await
}

/// FULL_RENORMALIZE's ledger part (PIPELINE.md §10.7 steps 1–3) from the raw records; the
/// events table is replaced in one commit.
pub async fn renormalize(ctx: &Context) -> Result<IngestResult> {
    let kept = kept_entries(ctx).await?;
    normalize_stream(ctx, &kept, true).await
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

/// Raw records normalized per chunk, and rows per ledger batch.
const CHUNK: usize = 65_536;

/// Appends events to `ledger/events` in one commit.
pub async fn write_events(ctx: &Context, accepted: &[(i64, NormalizedEvent)]) -> Result<()> {
    let rows: Vec<(i64, &NormalizedEvent)> = accepted.iter().map(|(s, e)| (*s, e)).collect();
    let batches = rows
        .chunks(CHUNK)
        .map(events_batch)
        .collect::<Result<Vec<_>>>()?;
    ctx.lake.append(tables::EVENTS, batches).await
}

pub async fn write_dead_letters(
    ctx: &Context,
    failures: &[(Option<i64>, EventFailure)],
) -> Result<()> {
    ctx.dead_letters(failures).await
}
