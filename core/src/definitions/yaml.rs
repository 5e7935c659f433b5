//! YAML 1.1 loading with PyYAML "safe load" scalar resolution (DEFINITIONS.md §1.1 rule 7).
//!
//! Definitions written for upstream were read by PyYAML, whose YAML 1.1 rules differ from the
//! YAML 1.2 rules of most Rust loaders (`yes`, `on` and `off` are booleans, `017` is octal,
//! `1e3` is a string). We take the event stream of `yaml-rust2`, which keeps each scalar's
//! style and position, and resolve plain scalars ourselves. The result is JSON (the engine's
//! one document model) plus the line and column where each node starts, for error messages.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Number, Value as Json};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A YAML document read into JSON, with the position of every node.
#[derive(Debug, Clone)]
pub struct YamlDocument {
    /// `None` for an empty document (or one that is just `null`).
    pub value: Option<Json>,
    /// Node path (`customer.states.active.when.upgrade.effects[1]`) → (line, column), 1-based.
    pub positions: HashMap<String, (usize, usize)>,
}

/// A YAML text that could not be read, with the 1-based line and column of the problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct YamlError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parses one YAML document with YAML 1.1 (PyYAML safe_load) scalar resolution.
pub fn load(text: &str) -> Result<YamlDocument, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| YamlError {
        line: e.marker().line(),
        column: e.marker().col() + 1,
        message: e.info().to_string(),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    if builder.documents > 1 {
        return Err(YamlError {
            line: builder.second_document.0,
            column: builder.second_document.1,
            message: "expected a single document in the stream, found another one".into(),
        });
    }
    let value = match builder.root {
        Some(Json::Null) | None => None,
        other => other,
    };
    Ok(YamlDocument {
        value,
        positions: builder.positions,
    })
}

/// A node under construction: a sequence or a mapping waiting for its children.
enum Open {
    Seq {
        items: Vec<Json>,
        anchor: usize,
        path: String,
    },
    Map {
        entries: Map<String, Json>,
        pending_key: Option<String>,
        anchor: usize,
        path: String,
        merge_next: bool,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    root: Option<Json>,
    anchors: HashMap<usize, Json>,
    positions: HashMap<String, (usize, usize)>,
    error: Option<YamlError>,
    documents: usize,
    second_document: (usize, usize),
}

impl Builder {
    fn fail(&mut self, mark: Marker, message: String) {
        if self.error.is_none() {
            self.error = Some(YamlError {
                line: mark.line(),
                column: mark.col() + 1,
                message,
            });
        }
    }

    /// The path of the node that starts now (the next child of the innermost open node).
    fn child_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Open::Seq { items, path, .. }) => format!("{path}[{}]", items.len()),
            Some(Open::Map {
                pending_key, path, ..
            }) => match pending_key {
                Some(k) if path.is_empty() => k.clone(),
                Some(k) => format!("{path}.{k}"),
                None => path.clone(),
            },
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Open::Map {
                pending_key: None,
                ..
            })
        )
    }

    /// Places a finished node into its parent (or makes it the document root).
    fn attach(&mut self, node: Json, anchor: usize, mark: Marker) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map {
                entries,
                pending_key,
                merge_next,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(key_text(&node)),
                Some(key) => {
                    if *merge_next {
                        *merge_next = false;
                        if let Err(message) = merge_into(entries, node) {
                            self.fail(mark, message);
                        }
                    } else {
                        entries.insert(key, node);
                    }
                }
            },
        }
    }

    fn record_position(&mut self, mark: Marker) {
        if self.expecting_key() {
            return;
        }
        let path = self.child_path();
        self.positions
            .entry(path)
            .or_insert((mark.line(), mark.col() + 1));
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    self.second_document = (mark.line(), mark.col() + 1);
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let is_key = self.expecting_key();
                if is_key && style == TScalarStyle::Plain && tag.is_none() && text == "<<" {
                    // YAML merge key: the value's entries are merged into this mapping.
                    if let Some(Open::Map {
                        pending_key,
                        merge_next,
                        ..
                    }) = self.stack.last_mut()
                    {
                        *pending_key = Some("<<".into());
                        *merge_next = true;
                    }
                    return;
                }
                self.record_position(mark);
                match resolve_scalar(&text, style, tag.as_ref()) {
                    Ok(node) => self.attach(node, anchor, mark),
                    Err(message) => self.fail(mark, message),
                }
            }
            Event::Alias(id) => {
                self.record_position(mark);
                match self.anchors.get(&id).cloned() {
                    Some(node) => self.attach(node, 0, mark),
                    None => self.fail(mark, "found undefined alias".into()),
                }
            }
            Event::SequenceStart(anchor, _) => {
                if self.expecting_key() {
                    self.fail(mark, "a sequence cannot be a mapping key".into());
                    return;
                }
                self.record_position(mark);
                let path = self.child_path();
                self.stack.push(Open::Seq {
                    items: Vec::new(),
                    anchor,
                    path,
                });
            }
            Event::MappingStart(anchor, _) => {
                if self.expecting_key() {
                    self.fail(mark, "a mapping cannot be a mapping key".into());
                    return;
                }
                self.record_position(mark);
                let path = self.child_path();
                self.stack.push(Open::Map {
                    entries: Map::new(),
                    pending_key: None,
                    anchor,
                    path,
                    merge_next: false,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Open::Seq { items, anchor, .. }) => {
                    self.attach(Json::Array(items), anchor, mark)
                }
                Some(Open::Map {
                    entries, anchor, ..
                }) => self.attach(Json::Object(entries), anchor, mark),
                None => self.fail(mark, "unbalanced collection end".into()),
            },
            _ => {}
        }
    }
}

/// Merges the value of a `<<` key (a mapping or a list of mappings) into `entries`; keys
/// already present win, as in PyYAML.
fn merge_into(entries: &mut Map<String, Json>, value: Json) -> Result<(), String> {
    let sources = match value {
        Json::Object(m) => vec![m],
        Json::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Json::Object(m) => Ok(m),
                _ => Err("a merge key ('<<') needs mappings".to_string()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("a merge key ('<<') needs a mapping or a list of mappings".into()),
    };
    for source in sources {
        for (k, v) in source {
            entries.entry(k).or_insert(v);
        }
    }
    Ok(())
}

/// The text a non-string key stands for (Python's `str()` of the resolved key).
fn key_text(node: &Json) -> String {
    match node {
        Json::String(s) => s.clone(),
        Json::Null => "None".into(),
        Json::Bool(true) => "True".into(),
        Json::Bool(false) => "False".into(),
        Json::Number(n) => match n.as_f64() {
            Some(f) if !n.is_i64() && !n.is_u64() => python_float_repr(f),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn python_float_repr(f: f64) -> String {
    crate::canonical::float_json_text(f).replace("e-", "e-0")
}

static INT_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$",
    )
    .expect("int pattern")
});
static FLOAT_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
    )
    .expect("float pattern")
});
static TIMESTAMP_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$",
    )
    .expect("timestamp pattern")
});

fn resolve_scalar(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Result<Json, String> {
    if let Some(tag) = tag {
        return resolve_tagged(text, tag);
    }
    if style != TScalarStyle::Plain {
        return Ok(Json::String(text.to_string()));
    }
    resolve_plain(text)
}

fn resolve_tagged(text: &str, tag: &Tag) -> Result<Json, String> {
    let name = if tag.handle == "tag:yaml.org,2002:" || tag.handle == "!!" {
        tag.suffix.as_str()
    } else {
        return Err(format!(
            "unsupported YAML tag '{}{}'",
            tag.handle, tag.suffix
        ));
    };
    match name {
        "str" => Ok(Json::String(text.to_string())),
        "int" if INT_RE.is_match(text) => construct_int(text),
        "float" if FLOAT_RE.is_match(text) || INT_RE.is_match(text) => construct_float(text),
        "bool" if bool_value(text).is_some() => Ok(Json::Bool(bool_value(text).unwrap_or(false))),
        "null" => Ok(Json::Null),
        _ => Err(format!("cannot read '{text}' as !!{name}")),
    }
}

fn bool_value(text: &str) -> Option<bool> {
    match text {
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Some(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

fn resolve_plain(text: &str) -> Result<Json, String> {
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Ok(Json::Null);
    }
    if let Some(b) = bool_value(text) {
        return Ok(Json::Bool(b));
    }
    if INT_RE.is_match(text) {
        return construct_int(text);
    }
    if FLOAT_RE.is_match(text) {
        return construct_float(text);
    }
    if TIMESTAMP_RE.is_match(text) {
        return Err(format!(
            "'{text}' is read as a date, which is not a valid definition value; quote it (\"{text}\")"
        ));
    }
    Ok(Json::String(text.to_string()))
}

fn split_sign(text: &str) -> (bool, &str) {
    match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    }
}

fn construct_int(text: &str) -> Result<Json, String> {
    let cleaned = text.replace('_', "");
    let (negative, digits) = split_sign(&cleaned);
    let magnitude: Option<i128> = if digits == "0" {
        Some(0)
    } else if let Some(bin) = digits.strip_prefix("0b") {
        i128::from_str_radix(bin, 2).ok()
    } else if let Some(hex) = digits.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()
    } else if digits.contains(':') {
        digits.split(':').try_fold(0i128, |acc, part| {
            acc.checked_mul(60)?.checked_add(part.parse::<i128>().ok()?)
        })
    } else if digits.starts_with('0') {
        i128::from_str_radix(digits, 8).ok()
    } else {
        digits.parse::<i128>().ok()
    };
    let value = magnitude
        .map(|m| if negative { -m } else { m })
        .and_then(|v| i64::try_from(v).ok())
        .ok_or_else(|| format!("integer '{text}' does not fit in 64 bits"))?;
    Ok(Json::Number(value.into()))
}

fn construct_float(text: &str) -> Result<Json, String> {
    let cleaned = text.replace('_', "").to_lowercase();
    let (negative, digits) = split_sign(&cleaned);
    let magnitude = if digits == ".inf" {
        f64::INFINITY
    } else if digits == ".nan" {
        f64::NAN
    } else if digits.contains(':') {
        let mut parts: Vec<&str> = digits.split(':').collect();
        let last: f64 = parts
            .pop()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("cannot read '{text}' as a number"))?;
        let mut value = 0.0;
        for part in parts {
            value = value * 60.0 + part.parse::<f64>().map_err(|e| e.to_string())?;
        }
        value * 60.0 + last
    } else {
        let normalized = if digits.ends_with('.') {
            format!("{digits}0")
        } else {
            digits.to_string()
        };
        normalized
            .parse::<f64>()
            .map_err(|_| format!("cannot read '{text}' as a number"))?
    };
    let value = if negative { -magnitude } else { magnitude };
    Number::from_f64(value)
        .map(Json::Number)
        .ok_or_else(|| format!("'{text}' is not a finite number, which definitions cannot hold"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scalar(text: &str) -> Result<Json, String> {
        let doc = load(&format!("k: {text}\n")).map_err(|e| e.message)?;
        Ok(doc.value.unwrap()["k"].clone())
    }

    // DEFINITIONS.md §1.1 rule 7: PyYAML's YAML 1.1 resolution of plain scalars.
    #[test]
    fn booleans_follow_yaml_1_1() {
        for t in [
            "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON",
        ] {
            assert_eq!(scalar(t).unwrap(), json!(true), "{t}");
        }
        for t in [
            "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF",
        ] {
            assert_eq!(scalar(t).unwrap(), json!(false), "{t}");
        }
        assert_eq!(scalar("y").unwrap(), json!("y"));
        assert_eq!(scalar("n").unwrap(), json!("n"));
        assert_eq!(scalar("\"yes\"").unwrap(), json!("yes"));
        assert_eq!(scalar("tRUE").unwrap(), json!("tRUE"));
    }

    #[test]
    fn nulls_follow_yaml_1_1() {
        for t in ["~", "null", "Null", "NULL", ""] {
            assert_eq!(scalar(t).unwrap(), Json::Null, "{t:?}");
        }
        assert_eq!(scalar("'null'").unwrap(), json!("null"));
    }

    #[test]
    fn integers_follow_yaml_1_1() {
        assert_eq!(scalar("017").unwrap(), json!(15));
        assert_eq!(scalar("0b101").unwrap(), json!(5));
        assert_eq!(scalar("0x1F").unwrap(), json!(31));
        assert_eq!(scalar("1_000").unwrap(), json!(1000));
        assert_eq!(scalar("1:30").unwrap(), json!(90));
        assert_eq!(scalar("-42").unwrap(), json!(-42));
        assert_eq!(scalar("+7").unwrap(), json!(7));
        assert_eq!(scalar("0").unwrap(), json!(0));
        assert_eq!(scalar("0o17").unwrap(), json!("0o17"));
        assert_eq!(scalar("08").unwrap(), json!("08"));
        assert!(scalar("99999999999999999999").is_err());
    }

    #[test]
    fn floats_need_a_dot_and_a_signed_exponent() {
        assert_eq!(scalar("1e3").unwrap(), json!("1e3"));
        assert_eq!(scalar("1.0e3").unwrap(), json!("1.0e3"));
        assert_eq!(scalar("1.0e+3").unwrap(), json!(1000.0));
        assert_eq!(scalar("1.").unwrap(), json!(1.0));
        assert_eq!(scalar(".5").unwrap(), json!(0.5));
        assert_eq!(scalar("-2.5").unwrap(), json!(-2.5));
        assert_eq!(scalar("1:30.5").unwrap(), json!(90.5));
        assert!(scalar(".inf").unwrap_err().contains("finite"));
    }

    #[test]
    fn dates_are_rejected_and_durations_are_strings() {
        let err = scalar("2024-01-01").unwrap_err();
        assert!(err.contains("quote it"), "{err}");
        assert!(scalar("2024-01-01 10:00:00").is_err());
        assert_eq!(scalar("\"2024-01-01\"").unwrap(), json!("2024-01-01"));
        assert_eq!(scalar("90d").unwrap(), json!("90d"));
    }

    #[test]
    fn mappings_keep_declaration_order_and_positions() {
        let doc =
            load("customer:\n  identity:\n    phone: {}\n    email:\n  states: [a, b]\n").unwrap();
        let v = doc.value.unwrap();
        let keys: Vec<_> = v["customer"]["identity"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, ["phone", "email"]);
        assert_eq!(v["customer"]["identity"]["email"], Json::Null);
        assert_eq!(doc.positions["customer.identity.phone"], (3, 12));
        assert_eq!(doc.positions["customer.states[1]"], (5, 15));
    }

    #[test]
    fn non_string_keys_become_their_python_text() {
        let v = load("on: 1\n3: x\n~: y\n").unwrap().value.unwrap();
        assert_eq!(v, json!({"True": 1, "3": "x", "None": "y"}));
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let v = load("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\nlist: [*b]\n")
            .unwrap()
            .value
            .unwrap();
        assert_eq!(v["other"], json!({"x": 1, "y": 3}));
        assert_eq!(v["list"][0], json!({"x": 1, "y": 2}));
    }

    #[test]
    fn syntax_errors_report_line_and_column() {
        let err = load("a:\n  b: [1, 2\nc: d\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
        assert!(err.column >= 1);
        let err = load("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn empty_documents_are_none() {
        assert!(load("").unwrap().value.is_none());
        assert!(load("# only a comment\n").unwrap().value.is_none());
        assert!(load("~\n").unwrap().value.is_none());
    }
}
