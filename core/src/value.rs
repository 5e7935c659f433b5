//! Runtime values (EXPRESSIONS.md §1) and their conversions to and from JSON and text
//! (EXPRESSIONS.md §7). Every stage of the engine — normalized event data, entity properties,
//! expression results — speaks this one type.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

use crate::fasthash::same_text;

/// An instant, UTC, nanosecond precision.
pub type Instant = DateTime<Utc>;

/// A runtime value. Strings are reference counted because entity snapshots copy every
/// property on every change; cloning a snapshot must not allocate per string.
#[derive(Debug, Clone, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(Arc<str>),
    DateTime(Instant),
    /// A non-negative span.
    Duration(Duration),
    Array(Arc<Vec<Value>>),
}

/// The kind of a value, as named in error messages ("Cannot compare Null with Int").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Null,
    Bool,
    Int,
    Float,
    String,
    DateTime,
    Duration,
    Array,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Null => "Null",
            Kind::Bool => "Bool",
            Kind::Int => "Int",
            Kind::Float => "Float",
            Kind::String => "String",
            Kind::DateTime => "DateTime",
            Kind::Duration => "Duration",
            Kind::Array => "Array",
        })
    }
}

impl Value {
    pub fn kind(&self) -> Kind {
        match self {
            Value::Null => Kind::Null,
            Value::Bool(_) => Kind::Bool,
            Value::Int(_) => Kind::Int,
            Value::Float(_) => Kind::Float,
            Value::String(_) => Kind::String,
            Value::DateTime(_) => Kind::DateTime,
            Value::Duration(_) => Kind::Duration,
            Value::Array(_) => Kind::Array,
        }
    }

    pub fn str(s: impl Into<Arc<str>>) -> Value {
        Value::String(s.into())
    }

    pub fn array(items: Vec<Value>) -> Value {
        Value::Array(Arc::new(items))
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Equality of the `==` operator (EXPRESSIONS.md §5.2): numbers compare across Int and
    /// Float, arrays are never equal, values of different kinds are unequal.
    pub fn loose_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b,
            (Value::Int(a), Value::Float(b)) | (Value::Float(b), Value::Int(a)) => {
                (*a as f64) == *b
            }
            (Value::String(a), Value::String(b)) => same_text(a, b),
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::DateTime(a), Value::DateTime(b)) => a == b,
            (Value::Duration(a), Value::Duration(b)) => a == b,
            _ => false,
        }
    }

    /// Structural identity used by `contains(array, x)` and by snapshot comparison: kinds must
    /// match exactly, arrays compare element-wise, Null equals Null.
    pub fn identical(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b || (a.is_nan() && b.is_nan()),
            (Value::String(a), Value::String(b)) => same_text(a, b),
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::DateTime(a), Value::DateTime(b)) => a == b,
            (Value::Duration(a), Value::Duration(b)) => a == b,
            (Value::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.identical(y))
            }
            _ => false,
        }
    }

    /// Converts JSON to a value (EXPRESSIONS.md §1): integers that fit 64 bits become Int,
    /// other numbers Float, objects become Null.
    pub fn from_json(json: &serde_json::Value) -> Value {
        match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i)
                } else {
                    Value::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            serde_json::Value::String(s) => Value::str(s.as_str()),
            serde_json::Value::Array(items) => {
                Value::array(items.iter().map(Value::from_json).collect())
            }
            serde_json::Value::Object(_) => Value::Null,
        }
    }

    /// Converts a value to JSON for ledger data and snapshots (EXPRESSIONS.md §7.2).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::String(s) => serde_json::Value::String(s.to_string()),
            Value::DateTime(t) => serde_json::Value::String(timestamp_text(t)),
            Value::Duration(d) => serde_json::Number::from_f64(d.as_secs_f64())
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(Value::to_json).collect())
            }
        }
    }

    /// Text of `to_string` (EXPRESSIONS.md §6.1): Null is empty, floats per §7.1, DateTime as
    /// canonical timestamp text, Duration as whole seconds, Array as canonical JSON.
    pub fn to_text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => float_text(*f),
            Value::String(s) => s.to_string(),
            Value::DateTime(t) => timestamp_text(t),
            Value::Duration(d) => d.as_secs().to_string(),
            Value::Array(_) => crate::canonical::to_canonical_json(&self.to_json()),
        }
    }
}

impl PartialEq for Value {
    /// Structural identity (see [`Value::identical`]); used by tests and change detection.
    fn eq(&self, other: &Value) -> bool {
        self.identical(other)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::str(s)
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::str(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

/// Float to text (EXPRESSIONS.md §7.1): shortest round-trip decimal, never an exponent,
/// integral values without a fraction. This is exactly Rust's `Display` for `f64`.
pub fn float_text(f: f64) -> String {
    f.to_string()
}

/// Canonical timestamp text (DEFINITIONS.md §0): `YYYY-MM-DDTHH:MM:SS[.f]+00:00`, the fraction
/// omitted when zero, else 3, 6 or 9 digits (the fewest that are exact).
pub fn timestamp_text(t: &Instant) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// An instant from epoch nanoseconds (i128 so that years 1–9999 fit).
pub fn instant_from_nanos(nanos: i128) -> Option<Instant> {
    let secs = nanos.div_euclid(1_000_000_000);
    let sub = nanos.rem_euclid(1_000_000_000) as u32;
    let secs = i64::try_from(secs).ok()?;
    Utc.timestamp_opt(secs, sub).single()
}

/// Epoch nanoseconds of an instant.
pub fn instant_nanos(t: &Instant) -> i128 {
    t.timestamp() as i128 * 1_000_000_000 + t.timestamp_subsec_nanos() as i128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_text_has_no_exponent() {
        assert_eq!(float_text(1.0), "1");
        assert_eq!(float_text(1.5), "1.5");
        assert_eq!(float_text(1e20), "100000000000000000000");
        assert_eq!(float_text(1e-7), "0.0000001");
        assert_eq!(float_text(f64::NAN), "NaN");
        assert_eq!(float_text(f64::INFINITY), "inf");
        assert_eq!(float_text(f64::NEG_INFINITY), "-inf");
        assert_eq!(float_text(0.1 + 0.2), "0.30000000000000004");
    }

    #[test]
    fn timestamp_text_uses_fewest_fraction_groups() {
        let t = |n: i128| timestamp_text(&instant_from_nanos(n).unwrap());
        let base = 1_704_103_200i128 * 1_000_000_000; // 2024-01-01T10:00:00Z
        assert_eq!(t(base), "2024-01-01T10:00:00+00:00");
        assert_eq!(t(base + 500_000_000), "2024-01-01T10:00:00.500+00:00");
        assert_eq!(t(base + 1_000), "2024-01-01T10:00:00.000001+00:00");
        assert_eq!(t(base + 1), "2024-01-01T10:00:00.000000001+00:00");
    }

    #[test]
    fn json_conversion_follows_the_spec() {
        let v = Value::from_json(&serde_json::json!({"a": 1}));
        assert!(v.is_null());
        assert_eq!(Value::from_json(&serde_json::json!(3)), Value::Int(3));
        assert_eq!(Value::from_json(&serde_json::json!(3.0)), Value::Float(3.0));
        assert_eq!(Value::Float(f64::NAN).to_json(), serde_json::Value::Null);
        assert_eq!(
            Value::Duration(Duration::from_secs(30)).to_json(),
            serde_json::json!(30.0)
        );
    }
}

/// Typed JSON: a JSON form of a value that reads back with its exact kind ([FIX P1], [FIX E2]),
/// for everything the engine stores between jobs (ledger data, working state). Int, Float
/// (always printed with a fraction or exponent), String, Bool, Null and Array are plain JSON;
/// the kinds JSON lacks are one-key objects: `{"$dt": "<canonical timestamp text>"}`,
/// `{"$dur": <nanoseconds>}`, and non-finite floats as `{"$f": "NaN" | "inf" | "-inf"}`.
pub mod typed {
    use super::*;
    use crate::fasthash::FastIndexMap;
    use serde_json::{Map, Value as Json};

    pub fn to_json(v: &Value) -> Json {
        match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Int(i) => Json::from(*i),
            Value::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => Json::Number(n),
                None => tag("$f", Json::String(float_text(*f))),
            },
            Value::String(s) => Json::String(s.to_string()),
            Value::DateTime(t) => tag("$dt", Json::String(timestamp_text(t))),
            Value::Duration(d) => tag("$dur", Json::from(d.as_nanos() as u64)),
            Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        }
    }

    fn tag(key: &str, v: Json) -> Json {
        let mut m = Map::new();
        m.insert(key.to_string(), v);
        Json::Object(m)
    }

    /// Reads typed JSON back; anything that is not a known tag reads as plain JSON would.
    pub fn from_json(j: &Json) -> Value {
        match j {
            Json::Number(n) if n.is_f64() => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            Json::Array(items) => Value::array(items.iter().map(from_json).collect()),
            Json::Object(m) if m.len() == 1 => {
                let (k, v) = m.iter().next().expect("one entry");
                match (k.as_str(), v) {
                    ("$dt", Json::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
                        .map(|t| Value::DateTime(t.with_timezone(&Utc)))
                        .unwrap_or(Value::Null),
                    ("$dur", Json::Number(n)) => {
                        Value::Duration(Duration::from_nanos(n.as_u64().unwrap_or(0)))
                    }
                    ("$f", Json::String(s)) => Value::Float(s.parse().unwrap_or(f64::NAN)),
                    _ => Value::Null,
                }
            }
            other => Value::from_json(other),
        }
    }

    /// Appends a whole map of values (event data, properties) as one typed JSON object text.
    pub fn write_map<'a>(
        out: &mut Vec<u8>,
        entries: impl IntoIterator<Item = (&'a str, &'a Value)>,
    ) {
        out.push(b'{');
        write_separated(out, entries, |out, (k, v)| {
            write_str(out, k);
            out.push(b':');
            write(out, v);
        });
        out.push(b'}');
    }

    /// Appends items separated by commas, each written by `each` (the inside of a JSON list
    /// or object).
    pub fn write_separated<T>(
        out: &mut Vec<u8>,
        items: impl IntoIterator<Item = T>,
        mut each: impl FnMut(&mut Vec<u8>, T),
    ) {
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            each(out, item);
        }
    }

    /// Appends `i` in decimal, as `Display` writes it, without the formatting machinery
    /// (most events carry an integer or two, written into ledger data and event ids).
    pub fn write_int(out: &mut Vec<u8>, i: i64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = i.unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if i < 0 {
            out.push(b'-');
        }
        out.extend_from_slice(&digits[at..]);
    }

    /// Appends a value's typed JSON text: exactly `to_json(v).to_string()`, written without
    /// building the JSON tree (ledger data and working state are written this way, once per
    /// event and per slot).
    pub fn write(out: &mut Vec<u8>, v: &Value) {
        use std::io::Write;
        match v {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Int(i) => write_int(out, *i),
            Value::Float(f) if f.is_finite() => {
                serde_json::to_writer(&mut *out, f).expect("writing to memory")
            }
            Value::Float(f) => write_tag(out, "$f", |out| write_str(out, &float_text(*f))),
            Value::String(s) => write_str(out, s),
            Value::DateTime(t) => write_tag(out, "$dt", |out| write_str(out, &timestamp_text(t))),
            Value::Duration(d) => write_tag(out, "$dur", |out| {
                write!(out, "{}", d.as_nanos() as u64).expect("writing to memory")
            }),
            Value::Array(items) => {
                out.push(b'[');
                write_separated(out, items.iter(), write);
                out.push(b']');
            }
        }
    }

    /// A JSON string (serde_json's escaping), appended. Most texts need no escape (serde_json
    /// escapes only `"`, `\` and control characters): those are copied between quotes at once.
    pub fn write_str(out: &mut Vec<u8>, s: &str) {
        if s.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\') {
            out.reserve(s.len() + 2);
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        } else {
            serde_json::to_writer(&mut *out, s).expect("writing to memory");
        }
    }

    fn write_tag(out: &mut Vec<u8>, key: &str, value: impl FnOnce(&mut Vec<u8>)) {
        out.push(b'{');
        write_str(out, key);
        out.push(b':');
        value(out);
        out.push(b'}');
    }

    /// Reads a typed JSON object text (ledger event data) straight into values: the same
    /// result as parsing it to JSON and mapping each entry with `from_json` (a text that is not
    /// an object reads as no entries), without building the JSON tree first. Only tagged
    /// values (`{"$dt": …}` and the like) still go through a JSON object.
    pub fn map_from_text(text: &str) -> Result<FastIndexMap<String, Value>, serde_json::Error> {
        Ok(serde_json::from_str::<TypedMap>(text)?.0)
    }

    struct TypedMap(FastIndexMap<String, Value>);
    struct Typed(Value);

    impl<'de> serde::Deserialize<'de> for TypedMap {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(TypedMapVisitor)
        }
    }

    impl<'de> serde::Deserialize<'de> for Typed {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(TypedVisitor)
        }
    }

    struct TypedMapVisitor;

    impl<'de> serde::de::Visitor<'de> for TypedMapVisitor {
        type Value = TypedMap;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON document")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TypedMap, A::Error> {
            // JSON text gives no size hint: the entries are gathered first so that the map is
            // built at its exact size (a map grown as read keeps up to twice the room it needs,
            // and a build holds a partition's worth of these maps at once).
            let mut entries = Vec::new();
            while let Some((k, Typed(v))) = map.next_entry::<String, Typed>()? {
                entries.push((k, v));
            }
            let mut out = FastIndexMap::with_capacity_and_hasher(entries.len(), Default::default());
            out.extend(entries);
            Ok(TypedMap(out))
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<TypedMap, A::Error> {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(TypedMap(FastIndexMap::default()))
        }

        fn visit_bool<E>(self, _: bool) -> Result<TypedMap, E> {
            Ok(TypedMap(FastIndexMap::default()))
        }
        fn visit_i64<E>(self, _: i64) -> Result<TypedMap, E> {
            Ok(TypedMap(FastIndexMap::default()))
        }
        fn visit_u64<E>(self, _: u64) -> Result<TypedMap, E> {
            Ok(TypedMap(FastIndexMap::default()))
        }
        fn visit_f64<E>(self, _: f64) -> Result<TypedMap, E> {
            Ok(TypedMap(FastIndexMap::default()))
        }
        fn visit_str<E>(self, _: &str) -> Result<TypedMap, E> {
            Ok(TypedMap(FastIndexMap::default()))
        }
        fn visit_unit<E>(self) -> Result<TypedMap, E> {
            Ok(TypedMap(FastIndexMap::default()))
        }
    }

    struct TypedVisitor;

    impl<'de> serde::de::Visitor<'de> for TypedVisitor {
        type Value = Typed;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a typed JSON value")
        }

        fn visit_unit<E>(self) -> Result<Typed, E> {
            Ok(Typed(Value::Null))
        }
        fn visit_bool<E>(self, b: bool) -> Result<Typed, E> {
            Ok(Typed(Value::Bool(b)))
        }
        fn visit_i64<E>(self, i: i64) -> Result<Typed, E> {
            Ok(Typed(Value::Int(i)))
        }
        fn visit_u64<E>(self, u: u64) -> Result<Typed, E> {
            // As `Value::from_json`: an integer beyond i64 reads as a float.
            Ok(Typed(match i64::try_from(u) {
                Ok(i) => Value::Int(i),
                Err(_) => Value::Float(u as f64),
            }))
        }
        fn visit_f64<E>(self, f: f64) -> Result<Typed, E> {
            Ok(Typed(Value::Float(f)))
        }
        fn visit_str<E>(self, s: &str) -> Result<Typed, E> {
            Ok(Typed(Value::str(s)))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Typed, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(4));
            while let Some(Typed(v)) = seq.next_element::<Typed>()? {
                items.push(v);
            }
            Ok(Typed(Value::array(items)))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Typed, A::Error> {
            // Tags are rare (date-times, durations, non-finite floats): read them as JSON.
            let mut m = Map::new();
            while let Some((k, v)) = map.next_entry::<String, Json>()? {
                m.insert(k, v);
            }
            Ok(Typed(from_json(&Json::Object(m))))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn strings_are_written_as_serde_json_writes_them() {
            let mut samples: Vec<String> = [
                "",
                "plain",
                "quote \" inside",
                "back\\slash",
                "tab\tnew\nline",
                "\u{7f} del, \u{1f} unit separator, \u{0} nul",
                "é ü ✓ 𝄞",
                "/slash/",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            samples.extend((0u8..128).map(|b| format!("a{}b", char::from(b))));
            // The same bytes at other places of a longer text.
            for b in 0u8..128 {
                for at in [0, 3, 7, 8, 12, 15, 16, 19] {
                    let mut text = vec![b'a'; 20];
                    text[at] = b;
                    samples.push(String::from_utf8(text).unwrap());
                }
            }
            for s in samples {
                let mut out = b"x".to_vec();
                write_str(&mut out, &s);
                let expected = format!("x{}", serde_json::to_string(&s).unwrap());
                assert_eq!(String::from_utf8(out).unwrap(), expected, "{s:?}");
            }
        }

        #[test]
        fn integers_are_written_as_display_writes_them() {
            let mut samples = vec![
                0,
                1,
                -1,
                9,
                10,
                -10,
                99,
                100,
                i64::MAX,
                i64::MIN,
                i64::MIN + 1,
            ];
            let mut n: i64 = 1;
            while let Some(next) = n.checked_mul(10) {
                samples.extend([n - 1, n, n + 1, -n, -(n - 1), next - 1]);
                n = next;
            }
            for i in samples {
                let mut out = b"x".to_vec();
                write_int(&mut out, i);
                assert_eq!(out, format!("x{i}").into_bytes(), "{i}");
                let mut typed = Vec::new();
                write(&mut typed, &Value::Int(i));
                assert_eq!(typed, to_json(&Value::Int(i)).to_string().into_bytes());
            }
        }

        // The direct reader agrees with the JSON-tree path on every kind, nesting, tags,
        // malformed tags, duplicate keys and non-object documents.
        #[test]
        fn map_from_text_matches_the_json_path() {
            let via_json = |text: &str| -> FastIndexMap<String, Value> {
                let json: Json = serde_json::from_str(text).unwrap();
                json.as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), from_json(v))).collect())
                    .unwrap_or_default()
            };
            let texts = [
                r#"{}"#,
                r#"{"a":1,"b":-2,"c":2.5,"d":1e3,"e":"x","f":null,"g":true}"#,
                r#"{"z":1,"a":2,"m":3}"#,
                r#"{"big":18446744073709551615,"neg":-9223372036854775808}"#,
                r#"{"t":{"$dt":"2024-01-02T03:04:05.123456789Z"},"d":{"$dur":86400000000123}}"#,
                r#"{"f":{"$f":"NaN"},"g":{"$f":"-inf"},"bad":{"$dt":"not a date"},"n":{"$dur":-1}}"#,
                r#"{"o":{"x":1,"y":2},"p":{"other":1},"q":{"$dt":5}}"#,
                r#"{"arr":[1,2.0,"s",[true,null],{"$dt":"2024-01-01T00:00:00Z"}]}"#,
                r#"{"k":1,"k":2,"j":3}"#,
                r#"[1,2,3]"#,
                r#""text""#,
                r#"42"#,
                r#"null"#,
            ];
            for text in texts {
                let direct = map_from_text(text).unwrap();
                let expected = via_json(text);
                assert_eq!(direct.len(), expected.len(), "{text}");
                for ((k1, v1), (k2, v2)) in direct.iter().zip(expected.iter()) {
                    assert_eq!(k1, k2, "{text}");
                    // NaN != NaN: compare kinds and texts.
                    assert_eq!(v1.kind(), v2.kind(), "{text} {k1}");
                    assert_eq!(format!("{v1:?}"), format!("{v2:?}"), "{text} {k1}");
                }
            }
            assert!(map_from_text("{not json").is_err());
        }

        #[test]
        fn every_kind_round_trips() {
            let t = instant_from_nanos(1_704_103_200_123_456_789).unwrap();
            let values = [
                Value::Null,
                Value::Bool(true),
                Value::Int(-7),
                Value::Float(1.0),
                Value::Float(2.5),
                Value::Float(f64::NAN),
                Value::Float(f64::NEG_INFINITY),
                Value::str("x"),
                Value::DateTime(t),
                Value::Duration(Duration::from_nanos(86_400_000_000_123)),
                Value::array(vec![Value::Int(1), Value::Float(1.0), Value::DateTime(t)]),
            ];
            for v in values {
                let text = to_json(&v).to_string();
                let mut written = Vec::new();
                write(&mut written, &v);
                assert_eq!(String::from_utf8(written).unwrap(), text);
                let back = from_json(&serde_json::from_str(&text).unwrap());
                assert_eq!(back, v, "{text}");
                assert_eq!(back.kind(), v.kind());
            }
        }

        #[test]
        fn a_map_is_written_as_its_json_tree_prints() {
            let t = instant_from_nanos(-1_000_000_001).unwrap();
            let entries = [
                ("plain", Value::str("a \"quoted\" \\ line\nnext\u{1}é😀")),
                ("ke\"y\u{7f}", Value::Float(-0.0)),
                ("big", Value::Float(1e300)),
                ("small", Value::Float(5e-324)),
                ("int", Value::Int(i64::MIN)),
                ("when", Value::DateTime(t)),
                ("inf", Value::Float(f64::INFINITY)),
                (
                    "nested",
                    Value::array(vec![Value::array(vec![]), Value::Null, Value::Bool(false)]),
                ),
            ];
            let tree: Map<String, Json> = entries
                .iter()
                .map(|(k, v)| (k.to_string(), to_json(v)))
                .collect();
            let map_to_text = |entries: &[(&str, Value)]| {
                let mut out = Vec::new();
                write_map(&mut out, entries.iter().map(|(k, v)| (*k, v)));
                String::from_utf8(out).unwrap()
            };
            let text = map_to_text(&entries);
            assert_eq!(text, Json::Object(tree).to_string());
            assert_eq!(map_to_text(&[]), "{}");
        }
    }
}
