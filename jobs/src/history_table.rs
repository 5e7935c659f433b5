//! SCD2 history as Delta tables (PIPELINE.md §8.1, §9): `<entity>_history` with typed property
//! columns, and `rel_<type>_history`. Rows go to Arrow and come back unchanged, so an
//! incremental build can read an entity's rows, apply its new snapshots and write them back.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use defacto_core::definitions::{Definitions, Entity, PropertyType};
use defacto_core::engine::EntityKey;
use defacto_core::history::{EntityHistory, HistoryRow, RelationshipHistory, RelationshipRow};
use defacto_core::normalize::coerce;
use defacto_core::value::{instant_from_nanos, instant_nanos, Instant, Value};
use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{
    DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};

use crate::error::{Error, Result};

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn column_type(kind: Option<PropertyType>) -> DataType {
    match kind {
        Some(PropertyType::Number) => DataType::Float64,
        Some(PropertyType::Integer) => DataType::Int64,
        Some(PropertyType::Boolean) => DataType::Boolean,
        Some(PropertyType::DateTime) => ts(),
        _ => DataType::Utf8,
    }
}

/// The schema of `<entity>_history`: system columns, properties in declaration order.
pub fn entity_schema(e: &Entity) -> SchemaRef {
    let mut fields = vec![
        Field::new(format!("{}_id", e.name), DataType::Utf8, false),
        Field::new(format!("{}_state", e.name), DataType::Utf8, false),
    ];
    for (name, p) in &e.properties {
        fields.push(Field::new(name, column_type(p.kind), true));
    }
    fields.extend([
        Field::new("valid_from", ts(), false),
        Field::new("valid_to", ts(), true),
        Field::new("merged_into", DataType::Utf8, true),
        Field::new("last_event_time", ts(), true),
        Field::new("state_entered_time", ts(), true),
        Field::new("created_time", ts(), true),
    ]);
    Arc::new(Schema::new(fields))
}

/// The schema of `rel_<type>_history`, with the relationship's declared properties (always
/// null, §9).
pub fn relationship_schema(defs: &Definitions, relationship: &str) -> SchemaRef {
    let mut fields = vec![
        Field::new("source_id", DataType::Utf8, false),
        Field::new("target_id", DataType::Utf8, false),
        Field::new("relationship_type", DataType::Utf8, false),
    ];
    let props = defs
        .entities
        .values()
        .flat_map(|e| &e.relationships)
        .find(|r| r.relationship == relationship)
        .map(|r| r.properties.clone())
        .unwrap_or_default();
    for (name, p) in &props {
        fields.push(Field::new(name, column_type(p.kind), true));
    }
    fields.extend([
        Field::new("valid_from", ts(), false),
        Field::new("valid_to", ts(), true),
    ]);
    Arc::new(Schema::new(fields))
}

/// Every declared relationship type, once.
pub fn relationship_types(defs: &Definitions) -> Vec<String> {
    let mut out: Vec<String> = defs
        .entities
        .values()
        .flat_map(|e| e.relationships.iter().map(|r| r.relationship.clone()))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn micros(t: &Instant) -> i64 {
    (instant_nanos(t) / 1_000) as i64
}

fn ts_array(values: impl Iterator<Item = Option<Instant>>) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from_iter(values.map(|t| t.map(|t| micros(&t))))
            .with_timezone("UTC"),
    )
}

/// A value as its column wants it (§8.4): converted with the coercion table when it does not
/// fit; `None` (a null cell) when it cannot be converted.
fn fit(v: &Value, kind: Option<PropertyType>) -> Option<Cow<'_, Value>> {
    use PropertyType as P;
    match (kind, v) {
        (_, Value::Null) => None,
        // Already of the column's type (nearly always): borrowed as it is.
        (None | Some(P::String), Value::String(_))
        | (Some(P::Number), Value::Float(_))
        | (Some(P::Integer), Value::Int(_))
        | (Some(P::Boolean), Value::Bool(_))
        | (Some(P::DateTime), Value::DateTime(_)) => Some(Cow::Borrowed(v)),
        (None | Some(P::String), Value::Array(_)) => Some(Cow::Owned(Value::str(v.to_text()))),
        _ => coerce(v.clone(), kind.map_or("string", |k| k.name()))
            .ok()
            .map(Cow::Owned),
    }
}

pub fn entity_batch(e: &Entity, rows: &[&HistoryRow]) -> Result<RecordBatch> {
    let schema = entity_schema(e);
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.entity_id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.state.as_str()),
        )),
    ];
    for (i, p) in e.properties.values().enumerate() {
        let cells: Vec<Option<Cow<'_, Value>>> = rows
            .iter()
            .map(|r| r.properties.get(i).and_then(|v| fit(v, p.kind)))
            .collect();
        columns.push(match p.kind {
            Some(PropertyType::Number) => Arc::new(Float64Array::from_iter(cells.iter().map(
                |c| match c.as_deref() {
                    Some(Value::Float(f)) => Some(*f),
                    _ => None,
                },
            ))),
            Some(PropertyType::Integer) => {
                Arc::new(Int64Array::from_iter(cells.iter().map(
                    |c| match c.as_deref() {
                        Some(Value::Int(i)) => Some(*i),
                        _ => None,
                    },
                )))
            }
            Some(PropertyType::Boolean) => Arc::new(BooleanArray::from_iter(cells.iter().map(
                |c| match c.as_deref() {
                    Some(Value::Bool(b)) => Some(*b),
                    _ => None,
                },
            ))),
            Some(PropertyType::DateTime) => ts_array(cells.iter().map(|c| match c.as_deref() {
                Some(Value::DateTime(t)) => Some(*t),
                _ => None,
            })),
            _ => Arc::new(StringArray::from_iter(cells.iter().map(
                |c| match c.as_deref() {
                    Some(Value::String(s)) => Some(&**s),
                    _ => None,
                },
            ))),
        });
    }
    columns.push(ts_array(rows.iter().map(|r| Some(r.valid_from))));
    columns.push(ts_array(rows.iter().map(|r| r.valid_to)));
    columns.push(Arc::new(StringArray::from_iter(
        rows.iter().map(|r| r.merged_into.as_deref()),
    )));
    columns.push(ts_array(rows.iter().map(|r| r.last_event_time)));
    columns.push(ts_array(rows.iter().map(|r| r.state_entered_time)));
    columns.push(ts_array(rows.iter().map(|r| r.created_time)));
    RecordBatch::try_new(schema, columns)
        .map_err(|e| Error::Storage(format!("building history rows: {e}")))
}

pub fn relationship_batch(
    defs: &Definitions,
    relationship: &str,
    rows: &[&RelationshipRow],
) -> Result<RecordBatch> {
    let schema = relationship_schema(defs, relationship);
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.source_id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.target_id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.relationship_type.as_str()),
        )),
    ];
    for field in schema
        .fields()
        .iter()
        .skip(3)
        .take(schema.fields().len() - 5)
    {
        columns.push(deltalake::arrow::array::new_null_array(
            field.data_type(),
            rows.len(),
        ));
    }
    columns.push(ts_array(rows.iter().map(|r| Some(r.valid_from))));
    columns.push(ts_array(rows.iter().map(|r| r.valid_to)));
    RecordBatch::try_new(schema, columns)
        .map_err(|e| Error::Storage(format!("building relationship rows: {e}")))
}

fn read_ts(col: &ArrayRef, i: usize) -> Option<Instant> {
    let a = col.as_primitive_opt::<TimestampMicrosecondType>()?;
    (!a.is_null(i))
        .then(|| instant_from_nanos(a.value(i) as i128 * 1_000))
        .flatten()
}

fn read_text(col: &ArrayRef, i: usize) -> Option<String> {
    if col.is_null(i) {
        return None;
    }
    match col.data_type() {
        DataType::Utf8 => Some(col.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Some(col.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Some(col.as_string_view().value(i).to_string()),
        _ => None,
    }
}

fn read_value(col: &ArrayRef, i: usize) -> Value {
    if col.is_null(i) {
        return Value::Null;
    }
    match col.data_type() {
        DataType::Float64 => Value::Float(
            col.as_primitive::<deltalake::arrow::datatypes::Float64Type>()
                .value(i),
        ),
        DataType::Int64 => Value::Int(
            col.as_primitive::<deltalake::arrow::datatypes::Int64Type>()
                .value(i),
        ),
        DataType::Boolean => Value::Bool(col.as_boolean().value(i)),
        DataType::Timestamp(..) => read_ts(col, i).map_or(Value::Null, Value::DateTime),
        _ => read_text(col, i).map_or(Value::Null, Value::from),
    }
}

/// History rows of an entity table read back, grouped by entity id.
pub fn read_entity_rows(e: &Entity, batch: &RecordBatch) -> Result<Vec<HistoryRow>> {
    let col = |name: &str| {
        batch.column_by_name(name).ok_or_else(|| {
            Error::Storage(format!(
                "column '{name}' is missing from {}_history",
                e.name
            ))
        })
    };
    let id = col(&format!("{}_id", e.name))?;
    let state = col(&format!("{}_state", e.name))?;
    let props: Vec<&ArrayRef> = e.properties.keys().map(|p| col(p)).collect::<Result<_>>()?;
    let (vf, vt, mi, le, se, ct) = (
        col("valid_from")?,
        col("valid_to")?,
        col("merged_into")?,
        col("last_event_time")?,
        col("state_entered_time")?,
        col("created_time")?,
    );
    (0..batch.num_rows())
        .map(|i| {
            Ok(HistoryRow {
                entity_id: read_text(id, i).unwrap_or_default(),
                state: read_text(state, i).unwrap_or_default(),
                properties: props.iter().map(|c| read_value(c, i)).collect(),
                valid_from: read_ts(vf, i)
                    .ok_or_else(|| Error::Storage("a history row has no valid_from".into()))?,
                valid_to: read_ts(vt, i),
                merged_into: read_text(mi, i),
                last_event_time: read_ts(le, i),
                state_entered_time: read_ts(se, i),
                created_time: read_ts(ct, i),
            })
        })
        .collect()
}

pub fn read_relationship_rows(batch: &RecordBatch) -> Result<Vec<RelationshipRow>> {
    let col = |name: &str| {
        batch.column_by_name(name).ok_or_else(|| {
            Error::Storage(format!(
                "column '{name}' is missing from a relationship table"
            ))
        })
    };
    let (s, t, r, vf, vt) = (
        col("source_id")?,
        col("target_id")?,
        col("relationship_type")?,
        col("valid_from")?,
        col("valid_to")?,
    );
    (0..batch.num_rows())
        .map(|i| {
            Ok(RelationshipRow {
                source_id: read_text(s, i).unwrap_or_default(),
                target_id: read_text(t, i).unwrap_or_default(),
                relationship_type: read_text(r, i).unwrap_or_default(),
                valid_from: read_ts(vf, i)
                    .ok_or_else(|| Error::Storage("a relationship row has no valid_from".into()))?,
                valid_to: read_ts(vt, i),
            })
        })
        .collect()
}

/// Groups read rows into per-entity histories: all of a table's rows of those entities at once
/// (grouping batch by batch would keep only the last batch's rows of an entity).
pub fn group_rows(entity_type: &str, rows: Vec<HistoryRow>) -> BTreeMap<EntityKey, EntityHistory> {
    let mut out: BTreeMap<EntityKey, EntityHistory> = BTreeMap::new();
    for row in rows {
        out.entry((entity_type.to_string(), row.entity_id.clone()))
            .or_default()
            .rows
            .push(row);
    }
    for h in out.values_mut() {
        h.rows.sort_by_key(|r| r.valid_from);
    }
    out
}

/// Groups relationship rows by their source entity.
pub fn group_relationships(
    entity_type_of: &dyn Fn(&str) -> Option<String>,
    rows: Vec<RelationshipRow>,
) -> BTreeMap<EntityKey, RelationshipHistory> {
    let mut out: BTreeMap<EntityKey, RelationshipHistory> = BTreeMap::new();
    for row in rows {
        let Some(ty) = entity_type_of(&row.source_id) else {
            continue;
        };
        out.entry((ty, row.source_id.clone()))
            .or_default()
            .rows
            .entry((row.relationship_type.clone(), row.target_id.clone()))
            .or_default()
            .push(row);
    }
    // Rows come in file order; a relationship's open row is its last by `valid_from`.
    for r in out.values_mut() {
        for rows in r.rows.values_mut() {
            rows.sort_by_key(|row| row.valid_from);
        }
    }
    out
}

/// SQL literal list of ids for predicates (`'a', 'b'`).
pub fn sql_list(ids: &[&str]) -> String {
    ids.iter()
        .map(|id| format!("'{}'", id.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ")
}
