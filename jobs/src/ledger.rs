//! The ledger tables' rows and their Arrow form: `ledger/raw` (records as received),
//! `ledger/events` (normalized events, data in typed JSON so every value reads back with
//! its kind), `ledger/assignments` (sequence → entity) and `ledger/dead_letters`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock};

use defacto_core::engine::EntityKey;
use defacto_core::fasthash::FastIndexMap;
use defacto_core::fasthash::FastMap;
use defacto_core::normalize::{Hints, NormalizedEvent};
use defacto_core::replay::LedgerEvent;
use defacto_core::results::EventFailure;
use defacto_core::value::{instant_from_nanos, instant_nanos, typed, Instant, Value};
use deltalake::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{Error, Result};

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

pub static RAW_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("sequence", DataType::Int64, false),
        Field::new("call", DataType::Int64, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
        Field::new("ingested_at", ts_type(), false),
        Field::new("batch_id", DataType::Utf8, false),
    ]))
});

pub static EVENTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("sequence", DataType::Int64, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("timestamp", ts_type(), false),
        Field::new("timestamp_ns", DataType::Int64, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("data", DataType::Utf8, false),
        Field::new("resolution_hints", DataType::Utf8, false),
    ]))
});

pub static ASSIGNMENTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("sequence", DataType::Int64, false),
        Field::new("entity_type", DataType::Utf8, false),
        Field::new("entity_id", DataType::Utf8, false),
    ]))
});

pub static DEAD_LETTERS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("sequence", DataType::Int64, true),
        Field::new("source", DataType::Utf8, false),
        Field::new("stage", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
        Field::new("handler", DataType::Utf8, true),
        Field::new("field", DataType::Utf8, true),
        Field::new("entity_id", DataType::Utf8, true),
        Field::new("retryable", DataType::Boolean, false),
        Field::new("recorded_at", ts_type(), false),
    ]))
});

/// `ledger/redactions`: per redacted sequence, its `Kept` entry as JSON.
pub static REDACTIONS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("sequence", DataType::Int64, false),
        Field::new("kept", DataType::Utf8, false),
    ]))
});

pub fn redactions_batch(rows: &[(i64, String)]) -> Result<RecordBatch> {
    batch(
        &REDACTIONS_SCHEMA,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
        ],
    )
}

/// A record of `ledger/raw`.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    pub sequence: i64,
    pub call: i64,
    pub source: String,
    /// The record as JSON text, exactly as read.
    pub raw: String,
}

fn micros(t: &Instant) -> i64 {
    (instant_nanos(t) / 1_000) as i64
}

fn batch(schema: &SchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| Error::Storage(format!("building a batch: {e}")))
}

pub fn raw_batch(rows: &[RawRecord], batch_id: &str, at: Instant) -> Result<RecordBatch> {
    batch(
        &RAW_SCHEMA,
        vec![
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.sequence),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.call))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.source.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.raw.as_str()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|_| micros(&at)))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|_| batch_id))),
        ],
    )
}

pub fn events_batch(rows: &[(i64, &NormalizedEvent)]) -> Result<RecordBatch> {
    let mut data = TextColumn::with_capacity(rows.len(), rows.len() * 96);
    let mut hints = TextColumn::with_capacity(rows.len(), rows.len() * 64);
    for (_, e) in rows {
        data.row(|out| typed::write_map(out, e.data.iter().map(|(k, v)| (k.as_str(), v))));
        hints.row(|out| serde_json::to_writer(out, &e.hints).expect("hints serialize"));
    }
    batch(
        &EVENTS_SCHEMA,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(s, _)| *s))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|(_, e)| e.event_id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|(_, e)| e.event_type.as_str()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    rows.iter().map(|(_, e)| micros(&e.timestamp)),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|(_, e)| instant_nanos(&e.timestamp) as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|(_, e)| e.source.as_str()),
            )),
            data.finish()?,
            hints.finish()?,
        ],
    )
}

/// A text column whose values are written straight into one buffer (JSON per row, say),
/// instead of one `String` per row copied into the column afterwards.
struct TextColumn {
    values: Vec<u8>,
    offsets: Vec<i32>,
}

impl TextColumn {
    fn with_capacity(rows: usize, bytes: usize) -> TextColumn {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        TextColumn {
            values: Vec::with_capacity(bytes),
            offsets,
        }
    }

    /// Adds a row: `write` appends its UTF-8 text.
    fn row(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.values);
        // Past i32::MAX bytes the offsets wrap; `finish` refuses such a column.
        self.offsets.push(self.values.len() as i32);
    }

    fn finish(self) -> Result<ArrayRef> {
        if i32::try_from(self.values.len()).is_err() {
            return Err(Error::Storage(format!(
                "a batch's text column would hold {} bytes, over the 2 GiB a column can",
                self.values.len()
            )));
        }
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        let array = StringArray::try_new(offsets, Buffer::from_vec(self.values), None)
            .map_err(|e| Error::Storage(format!("building a text column: {e}")))?;
        Ok(Arc::new(array))
    }
}

pub fn assignments_batch(rows: &[(i64, String, String)]) -> Result<RecordBatch> {
    batch(
        &ASSIGNMENTS_SCHEMA,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.2.as_str()),
            )),
        ],
    )
}

/// A dead letter: the failure, and the sequence of its raw record when it has one.
pub fn dead_letters_batch(
    rows: &[(Option<i64>, &EventFailure)],
    at: Instant,
) -> Result<RecordBatch> {
    let stage = |f: &EventFailure| {
        serde_json::to_value(f.stage)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    batch(
        &DEAD_LETTERS_SCHEMA,
        vec![
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.source.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| stage(r.1)),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.error.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.raw.to_string()),
            )),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|r| r.1.handler.as_deref()),
            )),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|r| r.1.field.as_deref()),
            )),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|r| r.1.entity_id.as_deref()),
            )),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.1.recoverable)),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|_| micros(&at)))
                    .with_timezone("UTC"),
            ),
        ],
    )
}

/// Typed access to a batch's columns by name.
pub struct Columns<'a> {
    batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    pub fn new(batch: &'a RecordBatch) -> Self {
        Columns { batch }
    }

    fn column(&self, name: &str) -> Result<&'a ArrayRef> {
        self.batch.column_by_name(name).ok_or_else(|| {
            Error::Storage(format!("column '{name}' is missing from a ledger table"))
        })
    }

    pub fn i64(&self, name: &str) -> Result<&'a Int64Array> {
        self.column(name)?
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::Storage(format!("column '{name}' is not BIGINT")))
    }

    pub fn str(&self, name: &str) -> Result<StringColumn<'a>> {
        let col = self.column(name)?;
        if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
            return Ok(StringColumn::Utf8(a));
        }
        if let Some(a) = col
            .as_any()
            .downcast_ref::<deltalake::arrow::array::StringViewArray>()
        {
            return Ok(StringColumn::View(a));
        }
        if let Some(a) = col
            .as_any()
            .downcast_ref::<deltalake::arrow::array::LargeStringArray>()
        {
            return Ok(StringColumn::Large(a));
        }
        Err(Error::Storage(format!("column '{name}' is not text")))
    }
}

/// The string layouts a scan may return.
pub enum StringColumn<'a> {
    Utf8(&'a StringArray),
    View(&'a deltalake::arrow::array::StringViewArray),
    Large(&'a deltalake::arrow::array::LargeStringArray),
}

impl StringColumn<'_> {
    pub fn get(&self, i: usize) -> Option<&str> {
        match self {
            StringColumn::Utf8(a) => (!a.is_null(i)).then(|| a.value(i)),
            StringColumn::View(a) => (!a.is_null(i)).then(|| a.value(i)),
            StringColumn::Large(a) => (!a.is_null(i)).then(|| a.value(i)),
        }
    }
    pub fn value(&self, i: usize) -> &str {
        self.get(i).unwrap_or_default()
    }
}

/// A normalized event read back from `ledger/events`, with its hints.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event: LedgerEvent,
    pub hints: Hints,
}

/// Ledger rows without their hints (what builds replay).
pub fn read_ledger_events(batch: &RecordBatch) -> Result<Vec<LedgerEvent>> {
    read_ledger_rows(batch, |_| true)
}

/// The rows of a batch of ledger rows whose sequence `keep` selects, without their hints.
pub fn read_ledger_rows(
    batch: &RecordBatch,
    keep: impl Fn(i64) -> bool,
) -> Result<Vec<LedgerEvent>> {
    let c = Columns::new(batch);
    let (seq, id, ty, ns, src, data) = (
        c.i64("sequence")?,
        c.str("event_id")?,
        c.str("event_type")?,
        c.i64("timestamp_ns")?,
        c.str("source")?,
        c.str("data")?,
    );
    (0..batch.num_rows())
        .filter(|i| keep(seq.value(*i)))
        .map(|i| {
            Ok(LedgerEvent {
                sequence: seq.value(i),
                event_id: id.value(i).to_string(),
                event_type: ty.value(i).to_string(),
                timestamp: instant_from_nanos(ns.value(i) as i128)
                    .ok_or_else(|| Error::Storage("ledger timestamp out of range".into()))?,
                source: src.value(i).to_string(),
                data: read_data(seq.value(i), data.value(i))?,
            })
        })
        .collect()
}

fn read_data(sequence: i64, text: &str) -> Result<FastIndexMap<String, Value>> {
    typed::map_from_text(text)
        .map_err(|e| Error::Storage(format!("ledger row {sequence}: bad data: {e}")))
}

/// The `resolution_hints` of the ledger row at `sequence`.
pub fn parse_hints(text: &str, sequence: i64) -> Result<Hints> {
    serde_json::from_str(text)
        .map_err(|e| Error::Storage(format!("ledger row {sequence}: bad hints: {e}")))
}

/// A batch of ledger rows with their hints, decoded in parallel parts of `READ_PART` rows
/// (the resolve pass reads every event this way, and decoding was most of its main thread).
pub fn read_events(batch: &RecordBatch) -> Result<Vec<StoredEvent>> {
    use rayon::prelude::*;
    let rows = batch.num_rows();
    if rows <= READ_PART {
        return read_events_part(batch);
    }
    let parts = (0..rows.div_ceil(READ_PART))
        .into_par_iter()
        .map(|p| {
            let at = p * READ_PART;
            read_events_part(&batch.slice(at, READ_PART.min(rows - at)))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(parts.into_iter().flatten().collect())
}

/// Rows decoded per parallel task.
const READ_PART: usize = 2_048;

fn read_events_part(batch: &RecordBatch) -> Result<Vec<StoredEvent>> {
    let c = Columns::new(batch);
    let (seq, id, ty, ns, src, data, hints) = (
        c.i64("sequence")?,
        c.str("event_id")?,
        c.str("event_type")?,
        c.i64("timestamp_ns")?,
        c.str("source")?,
        c.str("data")?,
        c.str("resolution_hints")?,
    );
    (0..batch.num_rows())
        .map(|i| {
            let data = read_data(seq.value(i), data.value(i))?;
            let hints = parse_hints(hints.value(i), seq.value(i))?;
            Ok(StoredEvent {
                event: LedgerEvent {
                    sequence: seq.value(i),
                    event_id: id.value(i).to_string(),
                    event_type: ty.value(i).to_string(),
                    timestamp: instant_from_nanos(ns.value(i) as i128)
                        .ok_or_else(|| Error::Storage("ledger timestamp out of range".into()))?,
                    source: src.value(i).to_string(),
                    data,
                },
                hints,
            })
        })
        .collect()
}

pub fn read_raw(batch: &RecordBatch) -> Result<Vec<RawRecord>> {
    let c = Columns::new(batch);
    let (seq, call, src, raw) = (
        c.i64("sequence")?,
        c.i64("call")?,
        c.str("source")?,
        c.str("raw")?,
    );
    Ok((0..batch.num_rows())
        .map(|i| RawRecord {
            sequence: seq.value(i),
            call: call.value(i),
            source: src.value(i).to_string(),
            raw: raw.value(i).to_string(),
        })
        .collect())
}

/// Assignment rows grouped by entity as their batches arrive. A row allocates nothing unless
/// its entity is new (a million rows read as owned strings first cost two allocations each and
/// held the whole table at once); `finish` sorts the entities once and builds the ordered map
/// in bulk, as inserting rows one at a time into it costs a string comparison per tree level
/// per row.
#[derive(Default)]
pub struct AssignmentGroups(FastMap<String, FastMap<String, Vec<i64>>>);

impl AssignmentGroups {
    /// Adds the rows of an assignments batch whose entity id `keep` accepts.
    pub fn add(&mut self, batch: &RecordBatch, keep: impl Fn(&str) -> bool) -> Result<()> {
        let c = Columns::new(batch);
        let (seq, ty, id) = (
            c.i64("sequence")?,
            c.str("entity_type")?,
            c.str("entity_id")?,
        );
        for i in 0..batch.num_rows() {
            let (t, e) = (ty.value(i), id.value(i));
            if !keep(e) {
                continue;
            }
            let ids = match self.0.get_mut(t) {
                Some(ids) => ids,
                None => self.0.entry(t.to_string()).or_default(),
            };
            match ids.get_mut(e) {
                Some(seqs) => seqs.push(seq.value(i)),
                None => {
                    ids.insert(e.to_string(), vec![seq.value(i)]);
                }
            }
        }
        Ok(())
    }

    /// Entity → sequences.
    pub fn finish(self) -> BTreeMap<EntityKey, BTreeSet<i64>> {
        let mut entities: Vec<(EntityKey, Vec<i64>)> = Vec::new();
        for (ty, ids) in self.0 {
            entities.extend(ids.into_iter().map(|(id, seqs)| ((ty.clone(), id), seqs)));
        }
        entities.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        entities
            .into_iter()
            .map(|(key, mut seqs)| {
                seqs.sort_unstable();
                (key, seqs.into_iter().collect())
            })
            .collect()
    }
}

pub fn read_assignments(batch: &RecordBatch) -> Result<Vec<(i64, String, String)>> {
    let c = Columns::new(batch);
    let (seq, ty, id) = (
        c.i64("sequence")?,
        c.str("entity_type")?,
        c.str("entity_id")?,
    );
    Ok((0..batch.num_rows())
        .map(|i| {
            (
                seq.value(i),
                ty.value(i).to_string(),
                id.value(i).to_string(),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(r: &[(i64, &str, &str)]) -> Vec<(i64, String, String)> {
        r.iter()
            .map(|(s, t, i)| (*s, t.to_string(), i.to_string()))
            .collect()
    }

    // Rows spread over batches in any order group into the same ordered map, with only the
    // kept entities, as inserting them one at a time would.
    #[test]
    fn assignment_groups_match_one_at_a_time_insertion() {
        let batches = [
            rows(&[
                (7, "customer", "b"),
                (2, "order", "o1"),
                (3, "customer", "a"),
            ]),
            rows(&[
                (1, "customer", "b"),
                (9, "customer", "z"),
                (5, "order", "o1"),
            ]),
            rows(&[
                (4, "customer", "a"),
                (8, "order", "a"),
                (6, "customer", "b"),
            ]),
        ];
        let keep = |id: &str| id != "z";
        let mut groups = AssignmentGroups::default();
        let mut expected: BTreeMap<EntityKey, BTreeSet<i64>> = BTreeMap::new();
        for b in &batches {
            groups.add(&assignments_batch(b).unwrap(), keep).unwrap();
            for (s, t, i) in b.iter().filter(|r| keep(&r.2)) {
                expected
                    .entry((t.clone(), i.clone()))
                    .or_default()
                    .insert(*s);
            }
        }
        let got = groups.finish();
        assert_eq!(got, expected);
        let keys: Vec<&EntityKey> = got.keys().collect();
        assert_eq!(keys.len(), 4);
        assert_eq!(
            got[&("customer".into(), "b".into())],
            BTreeSet::from([1, 6, 7])
        );
        assert!(!got.contains_key(&("customer".into(), "z".into())));
        assert!(AssignmentGroups::default().finish().is_empty());
    }
}
