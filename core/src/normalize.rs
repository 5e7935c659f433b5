//! Normalization (PIPELINE.md §2): a raw event of a source becomes a normalized event — its
//! event type, timestamp, mapped data, identity hints and content-derived event id — or a
//! failure naming the reason. Each event is independent: one bad event never affects another.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::definitions::{Definitions, Entity, Mapping, Source, SourceEvent};
use crate::expr::{Expr, Scope};
use crate::fasthash::{same_text, ByName, FastIndexMap, FastSet, SCANNED_NAMES};
use crate::results::EventFailure;
use crate::value::{float_text, instant_from_nanos, typed, Instant, Value};

/// Identity hints of one event: entity type (sorted) → identity field → hint value.
///
/// A map kept as a vector sorted by entity type: an event names one or two types, and each
/// event of a ledger holds its hints, so a B-tree (a node of eleven slots allocated for the
/// first entry) cost most of the hint extraction of `normalize`. It reads, writes (a JSON
/// object, keys in order) and compares as the map it stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints(Vec<(String, TypeHints)>);

/// One entity type's hints: identity field → hint value, in the source's listed order.
pub type TypeHints = FastIndexMap<String, String>;

impl Hints {
    pub fn new() -> Hints {
        Hints(Vec::new())
    }

    /// Empty, with room for `types` entity types.
    pub fn with_capacity(types: usize) -> Hints {
        Hints(Vec::with_capacity(types))
    }

    /// Sets `entity_type`'s hints, returning those it replaces.
    pub fn insert(&mut self, entity_type: String, values: TypeHints) -> Option<TypeHints> {
        match self
            .0
            .binary_search_by(|(t, _)| t.as_str().cmp(&entity_type))
        {
            Ok(at) => Some(std::mem::replace(&mut self.0[at].1, values)),
            Err(at) => {
                self.0.insert(at, (entity_type, values));
                None
            }
        }
    }

    pub fn get(&self, entity_type: &str) -> Option<&TypeHints> {
        self.0
            .binary_search_by(|(t, _)| t.as_str().cmp(entity_type))
            .ok()
            .map(|at| &self.0[at].1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entity types in order, with their hints.
    pub fn iter(&self) -> HintsIter<'_> {
        self.0.iter().map(|(t, v)| (t, v))
    }
}

/// The iterator of `Hints::iter`.
pub type HintsIter<'a> = std::iter::Map<
    std::slice::Iter<'a, (String, TypeHints)>,
    fn(&'a (String, TypeHints)) -> (&'a String, &'a TypeHints),
>;

impl std::ops::Index<&str> for Hints {
    type Output = TypeHints;

    /// `entity_type`'s hints; panics when there are none, as a map's index does.
    fn index(&self, entity_type: &str) -> &TypeHints {
        self.get(entity_type)
            .unwrap_or_else(|| panic!("no hints of entity type '{entity_type}'"))
    }
}

impl<'a> IntoIterator for &'a Hints {
    type Item = (&'a String, &'a TypeHints);
    type IntoIter = HintsIter<'a>;

    fn into_iter(self) -> HintsIter<'a> {
        self.iter()
    }
}

impl IntoIterator for Hints {
    type Item = (String, TypeHints);
    type IntoIter = std::vec::IntoIter<(String, TypeHints)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl FromIterator<(String, TypeHints)> for Hints {
    fn from_iter<I: IntoIterator<Item = (String, TypeHints)>>(items: I) -> Hints {
        let mut hints = Hints::new();
        for (t, v) in items {
            hints.insert(t, v);
        }
        hints
    }
}

impl<const N: usize> From<[(String, TypeHints); N]> for Hints {
    fn from(items: [(String, TypeHints); N]) -> Hints {
        items.into_iter().collect()
    }
}

impl serde::Serialize for Hints {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Hints {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Hints, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Hints;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of entity types to their hints")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Hints, A::Error> {
                let mut hints = Hints(Vec::with_capacity(map.size_hint().unwrap_or(1)));
                // Written in order, read in order: `insert` appends (a later duplicate of a
                // type replaces the earlier, as in a map).
                while let Some((t, v)) = map.next_entry::<String, TypeHints>()? {
                    hints.insert(t, v);
                }
                Ok(hints)
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// A normalized event (PIPELINE.md §2.7) before it has a ledger sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizedEvent {
    pub event_id: String,
    pub event_type: String,
    pub timestamp: Instant,
    pub source: String,
    /// Exactly one entry per mapping, in mapping order (nulls included). The raw event itself
    /// stays with the caller (the batch product keeps it in `ledger/raw`).
    pub data: FastIndexMap<String, Value>,
    pub hints: Hints,
}

/// Normalizes raw events with one definition set. `as_of` is the job's instant, which
/// `now()` returns inside mapping expressions.
pub struct Normalizer<'a> {
    defs: &'a Definitions,
    as_of: Instant,
}

impl<'a> Normalizer<'a> {
    pub fn new(defs: &'a Definitions, as_of: Instant) -> Self {
        Normalizer { defs, as_of }
    }

    pub fn source(&self, name: &str) -> Option<&'a Source> {
        self.defs.sources.get(name)
    }

    /// Normalizes one raw event of `source` (the steps of §2.2, in order). The failure is
    /// large, but it is the product of this call, not a rare path to keep cheap.
    #[allow(clippy::result_large_err)]
    pub fn normalize(&self, source: &str, raw: &Json) -> Result<NormalizedEvent, EventFailure> {
        let fail = |handler: Option<&str>, field: Option<&str>, error: String| {
            EventFailure::normalization(raw, source, handler, field, error)
        };
        let Some(src) = self.defs.sources.by_name(source) else {
            return Err(fail(
                None,
                None,
                format!("Source '{source}' is not defined"),
            ));
        };
        let event = lookup_event(src, raw).map_err(|(field, e)| fail(None, field, e))?;
        let handler = Some(event.name.as_str());
        let ts_field = &src.timestamp_field;
        let timestamp = parse_timestamp_field(top_field(raw, ts_field), ts_field)
            .map_err(|e| fail(handler, Some(ts_field), e))?;
        let data = self
            .map_fields(event, raw)
            .map_err(|(field, e)| fail(handler, Some(&field), e))?;
        let event_id = event_id(&event.name, &data, src.event_id.as_deref());
        let hints = extract_hints(self.defs, event, &data, self.as_of);
        Ok(NormalizedEvent {
            event_id,
            event_type: event.name.clone(),
            timestamp,
            source: source.to_string(),
            data,
            hints,
        })
    }

    fn map_fields(
        &self,
        event: &SourceEvent,
        raw: &Json,
    ) -> Result<FastIndexMap<String, Value>, (String, String)> {
        let mut data =
            FastIndexMap::with_capacity_and_hasher(event.mappings.len(), Default::default());
        let mut raw_scope: Option<RawScope> = None;
        for (field, mapping) in &event.mappings {
            let value = match (&mapping.from, &mapping.compute) {
                (Some(path), _) => Value::from_json(walk_path(raw, path).unwrap_or(&Json::Null)),
                (None, Some(expr)) => {
                    let scope = raw_scope.get_or_insert_with(|| RawScope::new(raw, self.as_of));
                    expr.eval(scope).map_err(|e| {
                        (
                            field.clone(),
                            format!("Compute expression failed for field '{field}': {e}"),
                        )
                    })?
                }
                (None, None) => Value::Null,
            };
            let value = coerce_mapped(field, mapping, value)?;
            data.insert(field.clone(), value);
        }
        Ok(data)
    }
}

/// §2.1: the event definition selected by the raw type field.
fn lookup_event<'s>(
    src: &'s Source,
    raw: &Json,
) -> Result<&'s SourceEvent, (Option<&'s str>, String)> {
    let field = src.event_type_field.as_str();
    let Some(Json::String(raw_type)) = top_field(raw, field) else {
        return Err((
            Some(field),
            format!("Missing or non-string event type field '{field}'"),
        ));
    };
    src.event_for_raw_type(raw_type).ok_or_else(|| {
        (
            Some(field),
            format!(
                "Unknown event type '{raw_type}' — not defined in source '{}'",
                src.name
            ),
        )
    })
}

fn coerce_mapped(field: &str, mapping: &Mapping, value: Value) -> Result<Value, (String, String)> {
    let value = match (&mapping.target_type, value) {
        (_, Value::Null) => Value::Null,
        (Some(target), v) => coerce(v, target).map_err(|reason| {
            (
                field.to_string(),
                format!("Type coercion failed for field '{field}' to '{target}': {reason}"),
            )
        })?,
        (None, v) => v,
    };
    Ok(match (value, &mapping.default) {
        (Value::Null, Some(default)) => Value::from_json(default),
        (v, _) => v,
    })
}

/// A field of a JSON object, found as `ByName` finds names: a raw event's handful of fields
/// is compared name by name (serde's map would hash the name with SipHash), larger objects
/// are hashed.
fn object_field<'j>(map: &'j serde_json::Map<String, Json>, key: &str) -> Option<&'j Json> {
    if map.len() <= SCANNED_NAMES {
        map.iter().find(|(k, _)| same_text(k, key)).map(|(_, v)| v)
    } else {
        map.get(key)
    }
}

/// A top-level field of a raw event (none when it is not an object).
fn top_field<'j>(raw: &'j Json, key: &str) -> Option<&'j Json> {
    raw.as_object().and_then(|m| object_field(m, key))
}

/// Walks a `from` dot path (§2.4): object keys, array indexes; anything else is absent.
pub fn walk_path<'j>(raw: &'j Json, path: &str) -> Option<&'j Json> {
    let mut node = raw;
    let mut rest = path;
    loop {
        // Segments found by a byte loop: paths are a word or two, shorter than what
        // `str::split`'s searcher sets up to scan.
        let (segment, next) = match rest.bytes().position(|b| b == b'.') {
            Some(dot) => (&rest[..dot], Some(&rest[dot + 1..])),
            None => (rest, None),
        };
        node = match node {
            Json::Object(m) => object_field(m, segment)?,
            Json::Array(items)
                if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) =>
            {
                items.get(segment.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
        match next {
            Some(after) => rest = after,
            None => return Some(node),
        }
    }
}

/// The coercions of the §2.4 table.
pub fn coerce(v: Value, target: &str) -> Result<Value, String> {
    let cannot = |v: &Value| format!("cannot convert {} to {target}", v.kind());
    match target {
        "string" => match v {
            Value::String(_) => Ok(v),
            Value::Int(i) => Ok(Value::str(i.to_string())),
            Value::Float(f) => Ok(Value::str(float_text(f))),
            Value::Bool(b) => Ok(Value::str(b.to_string())),
            other => Err(cannot(&other)),
        },
        "number" => match v {
            Value::Float(_) => Ok(v),
            Value::Int(i) => Ok(Value::Float(i as f64)),
            Value::String(ref s) => s
                .parse::<f64>()
                .map(Value::Float)
                .map_err(|_| format!("'{s}' is not a number")),
            other => Err(cannot(&other)),
        },
        "integer" => match v {
            Value::Int(_) => Ok(v),
            Value::Float(f) => Ok(Value::Int(f as i64)),
            Value::String(ref s) => parse_int_text(s)
                .map(Value::Int)
                .ok_or_else(|| format!("'{s}' is not an integer")),
            other => Err(cannot(&other)),
        },
        "boolean" => match v {
            Value::Bool(_) => Ok(v),
            Value::Int(i) => Ok(Value::Bool(i != 0)),
            Value::String(ref s) => match s.to_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(Value::Bool(true)),
                "false" | "0" | "no" => Ok(Value::Bool(false)),
                _ => Err(format!("'{s}' is not a boolean (true/false, 1/0, yes/no)")),
            },
            other => Err(cannot(&other)),
        },
        "datetime" => match v {
            Value::DateTime(_) => Ok(v),
            Value::String(ref s) => parse_rfc3339(s)
                .map(Value::DateTime)
                .ok_or_else(|| format!("'{s}' is not an RFC 3339 timestamp with an offset")),
            other => Err(cannot(&other)),
        },
        _ => Err(format!("unknown target type '{target}'")),
    }
}

/// Optional sign followed by digits, fitting 64 bits.
fn parse_int_text(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// §2.3: the event time from the timestamp field.
pub fn parse_timestamp_field(v: Option<&Json>, field: &str) -> Result<Instant, String> {
    let t = match v {
        None => return Err(format!("Missing timestamp field '{field}'")),
        Some(Json::String(s)) => parse_rfc3339(s).ok_or_else(|| {
            format!(
                "Failed to parse timestamp '{s}' in field '{field}': expected RFC 3339 with an offset, e.g. 2024-01-01T10:00:00Z; use a mapping with parse_datetime() for other formats"
            )
        })?,
        Some(Json::Number(n)) => match n.as_i64() {
            Some(secs) => instant_from_nanos(secs as i128 * 1_000_000_000)
                .ok_or_else(|| "Timestamp out of range".to_string())?,
            None => epoch_float(n.as_f64().unwrap_or(f64::NAN))?,
        },
        Some(other) => {
            let kind = match other {
                Json::Bool(_) => "boolean",
                Json::Null => "null",
                Json::Array(_) => "array",
                _ => "object",
            };
            return Err(format!(
                "Timestamp field '{field}' must be an ISO 8601 string or Unix epoch number, got {kind}"
            ));
        }
    };
    in_range(t)
}

/// PROPOSED (§2.3): instants outside years 1–9999 are rejected (this catches epochs in ms).
fn in_range(t: Instant) -> Result<Instant, String> {
    use chrono::Datelike;
    if (1..=9999).contains(&t.year()) {
        Ok(t)
    } else {
        Err(
            "Timestamp out of range (years 1 to 9999); epoch numbers are seconds, not milliseconds"
                .into(),
        )
    }
}

/// Epoch seconds with a fraction; floor semantics for negatives ([FIX P2]).
fn epoch_float(f: f64) -> Result<Instant, String> {
    if !f.is_finite() || f.abs() > 1e15 {
        return Err("Timestamp out of range".into());
    }
    let secs = f.floor();
    let nanos = ((f - secs) * 1e9) as i128;
    instant_from_nanos(secs as i128 * 1_000_000_000 + nanos)
        .ok_or_else(|| "Timestamp out of range".into())
}

/// RFC 3339 as §2.3 accepts it: `YYYY-MM-DD`, `T`/`t`/space, `HH:MM:SS`, an optional
/// fraction of up to 9 digits, and a mandatory `Z`/`z`/`±HH:MM` offset.
pub fn parse_rfc3339(s: &str) -> Option<Instant> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    // Digits read in place (at most 9 of them, so a u32 holds them): `str::parse` checked for
    // signs and overflow at each of the seven fields of every event's timestamp.
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        b.get(range)?.iter().try_fold(0u32, |n, c| {
            let digit = c.wrapping_sub(b'0');
            (digit <= 9).then(|| n * 10 + u32::from(digit))
        })
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let digits = end - start;
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = num(start..end)? * 10u32.pow(9 - digits as u32);
        i = end;
    }
    let offset_secs: i64 = match &s[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && rest.as_bytes()[3] == b':' =>
        {
            let h = num(i + 1..i + 3)? as i64;
            let m = num(i + 4..i + 6)? as i64;
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    // A leap second (:60) is accepted as the last nanosecond-carrying second, like chrono does.
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second.min(59), nanos)?;
    let local = NaiveDateTime::new(date, time);
    let utc = Utc.from_utc_datetime(&local);
    if offset_secs == 0 {
        return Some(utc);
    }
    Some(utc - chrono::Duration::seconds(offset_secs))
}

/// §2.6: `e_` + SHA-256 of `event_type|PAIRS`.
pub fn event_id(
    event_type: &str,
    data: &FastIndexMap<String, Value>,
    fields: Option<&[String]>,
) -> String {
    let mut pairs: Vec<(&String, &Value)> = data
        .iter()
        .filter(|(k, _)| fields.is_none_or(|f| f.iter().any(|x| x == *k)))
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    let mut text: Vec<u8> = Vec::with_capacity(128);
    text.extend_from_slice(event_type.as_bytes());
    text.extend_from_slice(b"|[");
    typed::write_separated(&mut text, pairs, |text, (k, v)| {
        text.push(b'[');
        typed::write_str(text, k);
        text.push(b',');
        tagged(text, v);
        text.push(b']');
    });
    text.push(b']');
    let mut id = String::with_capacity(66);
    id.push_str("e_");
    crate::canonical::push_hex(&mut id, &Sha256::digest(&text));
    id
}

/// The tagged value form used in event ids (serde's externally tagged enum form), appended.
fn tagged(out: &mut Vec<u8>, v: &Value) {
    use std::io::Write;
    let fail = "writing to memory";
    match v {
        Value::Null => out.extend_from_slice(b"\"Null\""),
        Value::String(s) => {
            out.extend_from_slice(b"{\"String\":");
            typed::write_str(out, s);
            out.push(b'}');
        }
        Value::Int(i) => {
            out.extend_from_slice(b"{\"Int\":");
            typed::write_int(out, *i);
            out.push(b'}');
        }
        Value::Float(f) => {
            out.extend_from_slice(b"{\"Float\":");
            serde_json::to_writer(&mut *out, f).expect(fail);
            out.push(b'}');
        }
        Value::Bool(b) => write!(out, "{{\"Bool\":{b}}}").expect(fail),
        Value::DateTime(t) => {
            let text = t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
            write!(out, "{{\"DateTime\":\"{text}\"}}").expect(fail);
        }
        Value::Duration(d) => write!(out, "{{\"Duration\":{}}}", d.as_secs_f64()).expect(fail),
        Value::Array(items) => {
            out.extend_from_slice(b"{\"Array\":[");
            typed::write_separated(out, items.iter(), tagged);
            out.extend_from_slice(b"]}");
        }
    }
}

/// §2.5: hints per entity type (sorted by name), fields in listed order.
pub fn extract_hints(
    defs: &Definitions,
    event: &SourceEvent,
    data: &FastIndexMap<String, Value>,
    as_of: Instant,
) -> Hints {
    let mut hints = Hints::with_capacity(event.hints.len());
    let mut types: Vec<(&String, &Vec<String>)> = event.hints.iter().collect();
    if types.len() > 1 {
        types.sort_by(|a, b| a.0.cmp(b.0));
    }
    for (entity_type, fields) in types {
        let entity = defs.entities.by_name(entity_type);
        let mut values = FastIndexMap::with_capacity_and_hasher(fields.len(), Default::default());
        for field in fields {
            let Some(value) = data
                .by_name(field)
                .and_then(|v| hint_value(entity, field, v, as_of))
            else {
                continue;
            };
            values.insert(field.clone(), value);
        }
        if !values.is_empty() {
            hints.insert(entity_type.clone(), values);
        }
    }
    hints
}

/// The text of a hint value: String as is, Int decimal, Float per §7.1; other kinds none.
pub fn hint_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(float_text(*f)),
        _ => None,
    }
}

/// The hint a data value gives (§2.5): its text (`hint_text`), through the identity field's
/// `normalize` expression when the entity type declares one.
fn hint_value(entity: Option<&Entity>, field: &str, v: &Value, as_of: Instant) -> Option<String> {
    let Some(expr) = entity.and_then(|e| normalize_expr(e, field)) else {
        return hint_text(v);
    };
    match v {
        // A String is its own text: the expression reads it as it is, not a copy.
        Value::String(_) => normalized(expr, v.clone(), as_of).or_else(|| hint_text(v)),
        _ => Some(normalized_text(expr, hint_text(v)?, as_of)),
    }
}

/// Applies the identity field's `normalize` expression; a failure or a non-String result
/// leaves the value as it was (§2.5 step 2).
pub fn normalize_hint(entity: &Entity, field: &str, text: String, as_of: Instant) -> String {
    match normalize_expr(entity, field) {
        Some(expr) => normalized_text(expr, text, as_of),
        None => text,
    }
}

/// `normalized` on a hint text, the text itself when the expression gives no String.
fn normalized_text(expr: &Expr, text: String, as_of: Instant) -> String {
    normalized(expr, Value::str(text.as_str()), as_of).unwrap_or(text)
}

/// The `normalize` expression of `entity`'s identity field `field`, if any.
fn normalize_expr<'e>(entity: &'e Entity, field: &str) -> Option<&'e Expr> {
    entity
        .identity
        .by_name(field)
        .and_then(|f| f.normalize.as_ref())
}

/// A `normalize` expression's result on the hint text `value`: none when it fails or gives
/// something other than a String.
fn normalized(expr: &Expr, value: Value, as_of: Instant) -> Option<String> {
    match expr.eval(&ValueScope { value, now: as_of }) {
        Ok(Value::String(s)) => Some(s.to_string()),
        _ => None,
    }
}

/// The scope of an identity `normalize` expression: only `value`.
struct ValueScope {
    value: Value,
    now: Instant,
}

impl Scope for ValueScope {
    fn variable(&self, name: &str) -> Option<&Value> {
        (name == "value").then_some(&self.value)
    }
    fn now(&self) -> Instant {
        self.now
    }
}

/// The scope of a mapping `compute`: the raw event's top-level fields as the event map.
struct RawScope {
    fields: HashMap<String, Value>,
    now: Instant,
}

impl RawScope {
    fn new(raw: &Json, now: Instant) -> RawScope {
        let fields = raw
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect()
            })
            .unwrap_or_default();
        RawScope { fields, now }
    }
}

impl Scope for RawScope {
    fn event_field(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }
    fn now(&self) -> Instant {
        self.now
    }
}

/// One ingest call normalized and deduplicated (§2.2–§2.9).
#[derive(Debug, Default)]
pub struct CallOutcome {
    /// Events to append, with their raw records' sequences, in canonical order.
    pub accepted: Vec<(i64, NormalizedEvent)>,
    /// Failures with their raw records' sequences, in input order.
    pub failures: Vec<(i64, EventFailure)>,
    /// Event ids of the skipped duplicates, in input order.
    pub duplicate_ids: Vec<String>,
}

/// Normalizes the records of one call — (sequence, source, raw event) in input order — and
/// deduplicates them against the ledger (`known`) and each other.
pub fn normalize_call<'r>(
    normalizer: &Normalizer<'_>,
    records: impl IntoIterator<Item = (i64, &'r str, impl Borrow<Json>)>,
    known: impl Fn(&str) -> bool,
) -> CallOutcome {
    normalize_call_kept(normalizer, records, known, |_| None)
}

/// What a redacted row keeps across renormalizations (§12.2): the event id and hints its
/// ledger row had when first redacted, and the redacted values of its data fields. The
/// redaction marker so never enters an event id or an identity key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Kept {
    pub event_id: String,
    pub hints: Hints,
    /// Data fields → their redacted values (typed JSON).
    pub data: BTreeMap<String, Json>,
}

/// `normalize_call`, where a record with a `Kept` entry (by sequence) keeps its event id,
/// hints and redacted data values instead of the ones computed from its raw record.
pub fn normalize_call_kept<'r, 'k>(
    normalizer: &Normalizer<'_>,
    records: impl IntoIterator<Item = (i64, &'r str, impl Borrow<Json>)>,
    known: impl Fn(&str) -> bool,
    kept: impl Fn(i64) -> Option<&'k Kept>,
) -> CallOutcome {
    let (normalized, failures) = normalize_records(normalizer, records, kept);
    let dedup = dedup_call(
        normalized.into_iter().enumerate().collect(),
        |(_, e)| (e.event_id.as_str(), e.timestamp),
        known,
    );
    CallOutcome {
        accepted: dedup.accepted,
        failures,
        duplicate_ids: dedup.duplicate_ids,
    }
}

/// Normalized events and failures, each with the sequence of its raw record.
pub type Normalized = (Vec<(i64, NormalizedEvent)>, Vec<(i64, EventFailure)>);

/// Normalizes records — (sequence, source, raw event) — without deduplicating them: the
/// events with their sequences, and the failures, both in input order. A record with a `Kept`
/// entry keeps its event id, hints and redacted values (§12.2).
pub fn normalize_records<'r, 'k>(
    normalizer: &Normalizer<'_>,
    records: impl IntoIterator<Item = (i64, &'r str, impl Borrow<Json>)>,
    kept: impl Fn(i64) -> Option<&'k Kept>,
) -> Normalized {
    let records = records.into_iter();
    let mut normalized = Vec::with_capacity(records.size_hint().0);
    let mut failures = Vec::new();
    // An owned raw event is dropped as soon as it is normalized.
    for (sequence, source, raw) in records {
        match normalizer.normalize(source, raw.borrow()) {
            Ok(mut e) => {
                if let Some(k) = kept(sequence) {
                    e.event_id = k.event_id.clone();
                    e.hints = k.hints.clone();
                    for (field, v) in &k.data {
                        e.data
                            .insert(field.clone(), crate::value::typed::from_json(v));
                    }
                }
                normalized.push((sequence, e))
            }
            Err(f) => failures.push((sequence, f)),
        }
    }
    (normalized, failures)
}

/// The outcome of deduplicating one call's normalized events (§2.9).
#[derive(Debug, Default)]
pub struct Deduplicated<T> {
    /// Events to append, in canonical order (timestamp, then input order).
    pub accepted: Vec<T>,
    /// Event ids of the skipped duplicates, in input order.
    pub duplicate_ids: Vec<String>,
}

/// Deduplicates the events of one call: sorted by timestamp (stable), an event whose id is
/// already in the ledger (`known`) or earlier in the sorted call is a duplicate.
pub fn dedup_call<T>(
    events: Vec<(usize, T)>,
    key: impl Fn(&T) -> (&str, Instant),
    known: impl Fn(&str) -> bool,
) -> Deduplicated<T> {
    let mut sorted = events;
    sorted.sort_by_key(|(i, e)| (key(e).1, *i));
    let mut seen: FastSet<String> = FastSet::default();
    seen.reserve(sorted.len());
    let mut accepted = Vec::with_capacity(sorted.len());
    let mut duplicates: Vec<(usize, String)> = Vec::new();
    for (i, e) in sorted {
        let id = key(&e).0;
        if known(id) || seen.contains(id) {
            duplicates.push((i, id.to_string()));
        } else {
            seen.insert(id.to_string());
            accepted.push(e);
        }
    }
    duplicates.sort_by_key(|(i, _)| *i);
    Deduplicated {
        accepted,
        duplicate_ids: duplicates.into_iter().map(|(_, id)| id).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> TypeHints {
        pairs
            .iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn paths_find_fields_in_small_and_large_objects_alike() {
        // Up to SCANNED_NAMES fields are compared name by name, beyond that hashed.
        for width in [1, SCANNED_NAMES, SCANNED_NAMES + 1, 40] {
            let mut inner = serde_json::Map::new();
            for i in 0..width {
                inner.insert(format!("f{i}"), Json::from(i));
            }
            let raw = serde_json::json!({"type": "t", "a": {"b": [Json::Object(inner)]}});
            let last = format!("a.b.0.f{}", width - 1);
            assert_eq!(walk_path(&raw, &last), Some(&Json::from(width - 1)));
            assert_eq!(walk_path(&raw, "a.b.0.f0"), Some(&Json::from(0)));
            assert_eq!(walk_path(&raw, &format!("a.b.0.f{width}")), None);
            assert_eq!(walk_path(&raw, "a.b.1.f0"), None);
            assert_eq!(walk_path(&raw, "a.b.0.f0.x"), None);
            // Empty segments are keys like any other, before, between and after the dots.
            let odd = serde_json::json!({"": {"x": 1, "": {"": 3}}, "a": {"": 2}});
            assert_eq!(walk_path(&odd, ".x"), Some(&Json::from(1)));
            assert_eq!(walk_path(&odd, "a."), Some(&Json::from(2)));
            assert_eq!(walk_path(&odd, ".."), Some(&Json::from(3)));
            assert_eq!(walk_path(&odd, "a..x"), None);
            assert_eq!(top_field(&raw, "type"), Some(&Json::from("t")));
            assert_eq!(top_field(&raw, "typ"), None);
            assert_eq!(top_field(&Json::from(3), "type"), None);
        }
    }

    #[test]
    fn hints_keep_their_types_in_order_and_read_back_as_written() {
        let mut hints = Hints::new();
        assert_eq!(hints.insert("sub".into(), fields(&[("id", "s1")])), None);
        hints.insert("cust".into(), fields(&[("email", "a@x"), ("phone", "5")]));
        let replaced = hints.insert("sub".into(), fields(&[("id", "s2")]));
        assert_eq!(replaced, Some(fields(&[("id", "s1")])));
        let types: Vec<&String> = hints.iter().map(|(t, _)| t).collect();
        assert_eq!(types, ["cust", "sub"]);
        assert_eq!(hints["sub"]["id"], "s2");
        assert!(hints.get("order").is_none());
        // The stored form is the JSON object of the map: types sorted, fields in order.
        let text = serde_json::to_string(&hints).unwrap();
        assert_eq!(
            text,
            r#"{"cust":{"email":"a@x","phone":"5"},"sub":{"id":"s2"}}"#
        );
        assert_eq!(serde_json::from_str::<Hints>(&text).unwrap(), hints);
        // Read from an object in any order, a repeated type keeping its last value.
        let read: Hints = serde_json::from_str(
            r#"{"sub":{"id":"x"},"cust":{"email":"a@x","phone":"5"},"sub":{"id":"s2"}}"#,
        )
        .unwrap();
        assert_eq!(read, hints);
        assert!(serde_json::from_str::<Hints>("[]").is_err());
    }
}
