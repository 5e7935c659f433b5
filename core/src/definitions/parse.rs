//! Reading definition bodies (JSON from YAML or a document) into the model.
//!
//! Structural problems (DEFINITIONS.md §7.1, and the shape errors of §7.3) stop reading at the
//! first one, as upstream does. Expressions and durations that do not compile (§7.3) are
//! collected instead, so that `validate` reports every one of them together with the semantic
//! errors of §7.2.

use std::time::Duration;

use serde_json::{Map, Value as Json};

use super::model::*;
use super::Diagnostic;
use crate::expr::Expr;
use crate::fasthash::FastIndexMap;

/// One definition as read from its file or document: name, body and where it came from.
#[derive(Debug, Clone)]
pub struct RawDefinition {
    pub name: String,
    pub body: Json,
    pub origin: Origin,
}

/// The three parts of a definition set before they are read into the model.
#[derive(Debug, Clone, Default)]
pub struct RawDefinitions {
    pub entities: Vec<RawDefinition>,
    pub sources: Vec<RawDefinition>,
    pub schemas: Vec<RawDefinition>,
}

/// Reads raw definitions into the model. `Err` carries the first structural error; the
/// collected compilation errors are returned beside the model.
pub fn read(raw: &RawDefinitions) -> Result<(Definitions, Vec<Diagnostic>), Diagnostic> {
    let mut reader = Reader {
        origin: Origin::default(),
        compile_errors: Vec::new(),
    };
    let mut defs = Definitions::default();
    for r in &raw.entities {
        reader.origin = r.origin.clone();
        let entity = reader.entity(&r.name, &r.body)?;
        defs.entities.insert(r.name.clone(), entity);
    }
    for r in &raw.sources {
        reader.origin = r.origin.clone();
        let source = reader.source(&r.name, &r.body)?;
        defs.sources.insert(r.name.clone(), source);
    }
    for r in &raw.schemas {
        reader.origin = r.origin.clone();
        let schema = reader.schema(&r.name, &r.body)?;
        defs.schemas.insert(r.name.clone(), schema);
    }
    Ok((defs, reader.compile_errors))
}

/// Parses a time-rule threshold (DEFINITIONS.md §5): `<digits><d|h|m|s>` after trimming,
/// digits an unsigned 64-bit number (leading `+` and zeros allowed), no overflow.
pub fn parse_threshold(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let invalid = || {
        format!("invalid duration '{text}': expected a whole number followed by d, h, m or s (e.g. '90d')")
    };
    if t.len() < 2 || !t.is_char_boundary(t.len() - 1) {
        return Err(invalid());
    }
    let (digits, unit) = t.split_at(t.len() - 1);
    let unit_secs: u64 = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(invalid()),
    };
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    let secs = n
        .checked_mul(unit_secs)
        .ok_or_else(|| format!("duration '{text}' is too large"))?;
    Ok(Duration::from_secs(secs))
}

struct Reader {
    origin: Origin,
    compile_errors: Vec<Diagnostic>,
}

type Obj = Map<String, Json>;

impl Reader {
    fn err(&self, path: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(self.origin.file.clone(), path, message)
    }

    fn object<'a>(&self, v: &'a Json, path: &str, what: &str) -> Result<&'a Obj, Diagnostic> {
        v.as_object()
            .ok_or_else(|| self.err(path, format!("{what} must be a mapping, got {}", kind(v))))
    }

    /// A mapping that may also be written as null (meaning empty).
    fn optional_object<'a>(
        &self,
        body: &'a Obj,
        key: &str,
        path: &str,
    ) -> Result<Option<&'a Obj>, Diagnostic> {
        match body.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Object(m)) => Ok(Some(m)),
            Some(other) => Err(self.err(
                &format!("{path}.{key}"),
                format!("'{key}' must be a mapping, got {}", kind(other)),
            )),
        }
    }

    fn optional_list<'a>(
        &self,
        body: &'a Obj,
        key: &str,
        path: &str,
    ) -> Result<&'a [Json], Diagnostic> {
        match body.get(key) {
            None | Some(Json::Null) => Ok(&[]),
            Some(Json::Array(items)) => Ok(items),
            Some(other) => Err(self.err(
                &format!("{path}.{key}"),
                format!("'{key}' must be a list, got {}", kind(other)),
            )),
        }
    }

    /// A required text member: absent or null is the structural error `missing`.
    fn required_text(
        &self,
        body: &Obj,
        key: &str,
        path: &str,
        missing: &str,
    ) -> Result<String, Diagnostic> {
        match body.get(key) {
            None | Some(Json::Null) => Err(self.err(path, missing.to_string())),
            Some(v) => self.text(v, &format!("{path}.{key}")),
        }
    }

    fn optional_text(
        &self,
        body: &Obj,
        key: &str,
        path: &str,
    ) -> Result<Option<String>, Diagnostic> {
        match body.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => self.text(v, &format!("{path}.{key}")).map(Some),
        }
    }

    /// Names and other texts: strings, or scalars written without quotes (`1`, `true`), which
    /// upstream would use as their text.
    fn text(&self, v: &Json, path: &str) -> Result<String, Diagnostic> {
        match v {
            Json::String(s) => Ok(s.clone()),
            Json::Number(n) => Ok(n.to_string()),
            Json::Bool(b) => Ok(if *b { "True" } else { "False" }.to_string()),
            other => Err(self.err(path, format!("expected a string, got {}", kind(other)))),
        }
    }

    /// An expression member: parsed now, a parse failure is a collected compilation error.
    fn expression(&mut self, body: &Obj, key: &str, path: &str) -> Option<Expr> {
        let at = format!("{path}.{key}");
        match body.get(key) {
            None | Some(Json::Null) => None,
            Some(Json::String(text)) => match Expr::parse(text) {
                Ok(e) => Some(e),
                Err(e) => {
                    let d = self.err(&at, format!("invalid expression in '{key}': {e}"));
                    self.compile_errors.push(d);
                    None
                }
            },
            Some(other) => {
                let d = self.err(
                    &at,
                    format!("'{key}' must be an expression string, got {}", kind(other)),
                );
                self.compile_errors.push(d);
                None
            }
        }
    }

    fn entity(&mut self, name: &str, body: &Json) -> Result<Entity, Diagnostic> {
        let path = name.to_string();
        let b = self.object(body, &path, "an entity definition")?;
        let starts = self.required_text(b, "starts", &path, "entity is missing 'starts'")?;
        let identity_body = match b.get("identity") {
            None | Some(Json::Null) => {
                return Err(self.err(&path, "entity is missing 'identity'"));
            }
            Some(v) => self.object(v, &format!("{path}.identity"), "'identity'")?,
        };
        if identity_body.is_empty() {
            return Err(self.err(
                &format!("{path}.identity"),
                "'identity' must declare at least one field",
            ));
        }
        let mut identity = FastIndexMap::default();
        for (field, spec) in identity_body {
            let fpath = format!("{path}.identity.{field}");
            identity.insert(field.clone(), self.identity_field(spec, &fpath)?);
        }
        reorder_identity(&mut identity, b.get("identity_order"));
        let properties = self.properties(b, &path)?;
        let states_body = match b.get("states") {
            None | Some(Json::Null) => return Err(self.err(&path, "entity is missing 'states'")),
            Some(v) => self.object(v, &format!("{path}.states"), "'states'")?,
        };
        let mut states = FastIndexMap::default();
        for (state_name, state_body) in states_body {
            let spath = format!("{path}.states.{state_name}");
            states.insert(state_name.clone(), self.state(state_body, &spath)?);
        }
        let mut relationships = Vec::new();
        for (i, rel) in self
            .optional_list(b, "relationships", &path)?
            .iter()
            .enumerate()
        {
            relationships.push(self.relationship(rel, &format!("{path}.relationships[{i}]"))?);
        }
        let always = self.handlers(b, "always", &path)?;
        Ok(Entity {
            name: name.to_string(),
            origin: self.origin.clone(),
            starts,
            identity,
            properties,
            states,
            relationships,
            always,
        })
    }

    fn identity_field(&mut self, spec: &Json, path: &str) -> Result<IdentityField, Diagnostic> {
        let empty = Obj::new();
        let b = match spec {
            Json::Null => &empty,
            Json::Object(m) => m,
            // Upstream accepts any non-mapping body as "all defaults".
            _ => &empty,
        };
        let match_mode = self
            .optional_text(b, "match", path)?
            .unwrap_or_else(|| "exact".to_string());
        let normalize = self.expression(b, "normalize", path);
        Ok(IdentityField {
            match_mode,
            normalize,
        })
    }

    fn properties(
        &mut self,
        b: &Obj,
        path: &str,
    ) -> Result<FastIndexMap<String, Property>, Diagnostic> {
        let mut out = FastIndexMap::default();
        if let Some(props) = self.optional_object(b, "properties", path)? {
            for (name, spec) in props {
                let ppath = format!("{path}.properties.{name}");
                out.insert(name.clone(), self.property(spec, &ppath)?);
            }
        }
        Ok(out)
    }

    fn property(&mut self, spec: &Json, path: &str) -> Result<Property, Diagnostic> {
        let b = self.object(spec, path, "a property")?;
        let type_name = self.required_text(b, "type", path, "property is missing 'type'")?;
        let member = |key: &str| b.get(key).filter(|v| !v.is_null()).cloned();
        Ok(Property {
            kind: PropertyType::parse(&type_name),
            type_name,
            default: member("default"),
            allowed: member("allowed"),
            min: member("min"),
            max: member("max"),
            sensitive: self.optional_text(b, "sensitive", path)?,
            treatment: self.optional_text(b, "treatment", path)?,
            compute: self.expression(b, "compute", path),
        })
    }

    fn state(&mut self, body: &Json, path: &str) -> Result<State, Diagnostic> {
        let b = match body {
            Json::Null => return Ok(State::default()),
            Json::Object(m) => m,
            other => {
                return Err(self.err(
                    path,
                    format!("a state must be a mapping or empty, got {}", kind(other)),
                ))
            }
        };
        let when = self.handlers(b, "when", path)?;
        let mut after = Vec::new();
        for (i, rule) in self.optional_list(b, "after", path)?.iter().enumerate() {
            if let Some(rule) = self.time_rule(rule, &format!("{path}.after[{i}]"))? {
                after.push(rule);
            }
        }
        Ok(State { when, after })
    }

    fn handlers(
        &mut self,
        b: &Obj,
        key: &str,
        path: &str,
    ) -> Result<FastIndexMap<String, Handler>, Diagnostic> {
        let mut out = FastIndexMap::default();
        if let Some(handlers) = self.optional_object(b, key, path)? {
            for (event, body) in handlers {
                let hpath = format!("{path}.{key}.{event}");
                out.insert(event.clone(), self.handler(body, &hpath)?);
            }
        }
        Ok(out)
    }

    fn handler(&mut self, body: &Json, path: &str) -> Result<Handler, Diagnostic> {
        let b = self.object(body, path, "a handler")?;
        let effects = match b.get("effects") {
            None | Some(Json::Null) => return Err(self.err(path, "handler is missing 'effects'")),
            Some(Json::Array(items)) if items.is_empty() => {
                return Err(self.err(
                    &format!("{path}.effects"),
                    "handler must have at least one effect",
                ))
            }
            Some(Json::Array(items)) => self.effects(items, &format!("{path}.effects"))?,
            Some(other) => {
                return Err(self.err(
                    &format!("{path}.effects"),
                    format!("'effects' must be a list, got {}", kind(other)),
                ))
            }
        };
        let guard = self.expression(b, "guard", path);
        Ok(Handler { guard, effects })
    }

    fn effects(&mut self, items: &[Json], path: &str) -> Result<Vec<Effect>, Diagnostic> {
        items
            .iter()
            .enumerate()
            .map(|(i, e)| self.effect(e, &format!("{path}[{i}]")))
            .collect()
    }

    fn effect(&mut self, e: &Json, path: &str) -> Result<Effect, Diagnostic> {
        let (kind_name, body) = match e {
            Json::String(s) if s == "create" => return Ok(Effect::Create),
            Json::String(s) => {
                return Err(self.err(
                    path,
                    format!("unknown effect '{s}': a bare string effect must be 'create'"),
                ))
            }
            Json::Object(m) if m.len() == 1 => m.iter().next().expect("one entry"),
            Json::Object(m) => {
                return Err(self.err(
                    path,
                    format!(
                    "an effect must be a mapping with exactly one key (its kind), found {} keys",
                    m.len()
                ),
                ))
            }
            other => {
                return Err(self.err(
                    path,
                    format!(
                        "an effect must be 'create' or a one-key mapping, got {}",
                        kind(other)
                    ),
                ))
            }
        };
        let empty = Obj::new();
        let b = match body {
            Json::Null => &empty,
            Json::Object(m) => m,
            other if kind_name == "create" => {
                let _ = other;
                &empty
            }
            other => {
                return Err(self.err(
                    &format!("{path}.{kind_name}"),
                    format!(
                        "the body of '{kind_name}' must be a mapping, got {}",
                        kind(other)
                    ),
                ))
            }
        };
        let epath = format!("{path}.{kind_name}");
        match kind_name.as_str() {
            "create" => Ok(Effect::Create),
            "transition" => Ok(Effect::Transition {
                to: self.required_text(b, "to", &epath, "'transition' is missing 'to'")?,
            }),
            "set" => {
                let property =
                    self.required_text(b, "property", &epath, "'set' is missing 'property'")?;
                let from = self.optional_text(b, "from", &epath)?;
                let value = b.get("value").filter(|v| !v.is_null()).cloned();
                let compute = self.expression(b, "compute", &epath);
                // Count a compute that failed to compile as present, so that the source count
                // check does not add a second, misleading error.
                let compute_written = b.get("compute").is_some_and(|v| !v.is_null());
                let condition = self.expression(b, "condition", &epath);
                let compute = match (compute, compute_written) {
                    (Some(c), _) => Some(c),
                    (None, true) => Some(Expr::parse("null").expect("null parses")),
                    (None, false) => None,
                };
                Ok(Effect::Set {
                    property,
                    from,
                    value,
                    compute,
                    condition,
                })
            }
            "increment" => Ok(Effect::Increment {
                property: self.required_text(
                    b,
                    "property",
                    &epath,
                    "'increment' is missing 'property'",
                )?,
                by: b
                    .get("by")
                    .filter(|v| !v.is_null())
                    .cloned()
                    .unwrap_or(Json::from(1)),
            }),
            "relate" => {
                let relationship =
                    self.required_text(b, "type", &epath, "'relate' is missing 'type'")?;
                let target = self.required_text(b, "target", &epath, "'relate' is missing 'target'")?;
                let hints = self.hint_lists(b.get("hints"), &format!("{epath}.hints"))?;
                let condition = self.expression(b, "condition", &epath);
                Ok(Effect::Relate {
                    relationship,
                    target,
                    hints,
                    condition,
                })
            }
            other => Err(self.err(
                path,
                format!(
                    "unknown effect kind '{other}' (expected create, transition, set, increment or relate)"
                ),
            )),
        }
    }

    /// `{entity_type: [field, ...]}`; entries whose value is not a list are ignored.
    fn hint_lists(
        &self,
        v: Option<&Json>,
        path: &str,
    ) -> Result<FastIndexMap<String, Vec<String>>, Diagnostic> {
        let mut out = FastIndexMap::default();
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(out);
        };
        let m = self.object(v, path, "'hints'")?;
        for (entity, fields) in m {
            if let Json::Array(items) = fields {
                let fields = items
                    .iter()
                    .enumerate()
                    .map(|(i, f)| self.text(f, &format!("{path}.{entity}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                out.insert(entity.clone(), fields);
            }
        }
        Ok(out)
    }

    fn time_rule(&mut self, rule: &Json, path: &str) -> Result<Option<TimeRule>, Diagnostic> {
        let b = self.object(rule, path, "a time rule")?;
        let type_name = self.required_text(b, "type", path, "time rule is missing 'type'")?;
        let threshold_text =
            self.required_text(b, "threshold", path, "time rule is missing 'threshold'")?;
        let kind = TimeRuleKind::parse(&type_name).ok_or_else(|| {
            self.err(
                &format!("{path}.type"),
                format!(
                    "unknown time rule type '{type_name}' (expected inactivity, expiration or state_duration)"
                ),
            )
        })?;
        let effects = self.effects(
            self.optional_list(b, "effects", path)?,
            &format!("{path}.effects"),
        )?;
        match parse_threshold(&threshold_text) {
            Ok(threshold) => Ok(Some(TimeRule {
                kind,
                threshold_text,
                threshold,
                effects,
            })),
            Err(message) => {
                let d = self.err(&format!("{path}.threshold"), message);
                self.compile_errors.push(d);
                Ok(None)
            }
        }
    }

    fn relationship(&mut self, rel: &Json, path: &str) -> Result<Relationship, Diagnostic> {
        let b = self.object(rel, path, "a relationship")?;
        let relationship = self.required_text(b, "type", path, "relationship is missing 'type'")?;
        let target = self.required_text(b, "target", path, "relationship is missing 'target'")?;
        let cardinality = self.required_text(
            b,
            "cardinality",
            path,
            "relationship is missing 'cardinality'",
        )?;
        let properties = self.properties(b, path)?;
        Ok(Relationship {
            relationship,
            target,
            cardinality,
            properties,
        })
    }

    fn source(&mut self, name: &str, body: &Json) -> Result<Source, Diagnostic> {
        let path = name.to_string();
        let b = self.object(body, &path, "a source definition")?;
        let event_type_field =
            self.required_text(b, "event_type", &path, "source is missing 'event_type'")?;
        let timestamp_field =
            self.required_text(b, "timestamp", &path, "source is missing 'timestamp'")?;
        let event_id = match b.get("event_id") {
            Some(Json::Array(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, f)| self.text(f, &format!("{path}.event_id[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            _ => None,
        };
        let events_body = match b.get("events") {
            None | Some(Json::Null) => return Err(self.err(&path, "source is missing 'events'")),
            Some(v) => self.object(v, &format!("{path}.events"), "'events'")?,
        };
        let mut events = FastIndexMap::default();
        for (event_name, event_body) in events_body {
            let epath = format!("{path}.events.{event_name}");
            events.insert(
                event_name.clone(),
                self.source_event(event_name, event_body, &epath)?,
            );
        }
        Ok(Source {
            name: name.to_string(),
            origin: self.origin.clone(),
            event_type_field,
            timestamp_field,
            event_id,
            events,
        })
    }

    fn source_event(
        &mut self,
        name: &str,
        body: &Json,
        path: &str,
    ) -> Result<SourceEvent, Diagnostic> {
        let empty = Obj::new();
        let b = match body {
            Json::Null => &empty,
            other => self.object(other, path, "an event definition")?,
        };
        let raw_type = self.optional_text(b, "raw_type", path)?;
        let mut mappings = FastIndexMap::default();
        let raw_mappings = self.optional_object(b, "mappings", path)?;
        if let Some(m) = raw_mappings {
            for (field, spec) in m {
                let mpath = format!("{path}.mappings.{field}");
                mappings.insert(field.clone(), self.mapping(spec, &mpath)?);
            }
        }
        let hints = self.hint_lists(b.get("hints"), &format!("{path}.hints"))?;
        Ok(SourceEvent {
            name: name.to_string(),
            raw_type,
            mappings,
            hints,
            raw_mappings: raw_mappings
                .filter(|m| !m.is_empty())
                .cloned()
                .map(Json::Object),
            raw_hints: b
                .get("hints")
                .and_then(Json::as_object)
                .filter(|m| !m.is_empty())
                .cloned()
                .map(Json::Object),
        })
    }

    fn mapping(&mut self, spec: &Json, path: &str) -> Result<Mapping, Diagnostic> {
        let empty = Obj::new();
        let b = match spec {
            Json::Null => &empty,
            other => self.object(other, path, "a field mapping")?,
        };
        let has_from = b.contains_key("from");
        let has_compute = b.contains_key("compute");
        Ok(Mapping {
            from: self.optional_text(b, "from", path)?,
            compute: self.expression(b, "compute", path),
            has_both: has_from && has_compute,
            target_type: self.optional_text(b, "type", path)?,
            default: b.get("default").filter(|v| !v.is_null()).cloned(),
        })
    }

    fn schema(&mut self, name: &str, body: &Json) -> Result<Schema, Diagnostic> {
        let path = name.to_string();
        let b = self.object(body, &path, "an event schema")?;
        let fields_body = match b.get("fields") {
            None | Some(Json::Null) => return Err(self.err(&path, "schema is missing 'fields'")),
            Some(v) => self.object(v, &format!("{path}.fields"), "'fields'")?,
        };
        let mut fields = FastIndexMap::default();
        for (field, spec) in fields_body {
            let fpath = format!("{path}.fields.{field}");
            let fb = self.object(spec, &fpath, "a schema field")?;
            let type_name =
                self.required_text(fb, "type", &fpath, "schema field is missing 'type'")?;
            let member = |key: &str| fb.get(key).filter(|v| !v.is_null()).cloned();
            fields.insert(
                field.clone(),
                SchemaField {
                    type_name,
                    required: matches!(fb.get("required"), Some(Json::Bool(true))),
                    allowed: member("allowed"),
                    min: member("min"),
                    max: member("max"),
                    min_length: member("min_length"),
                    regex: member("regex"),
                },
            );
        }
        Ok(Schema {
            name: name.to_string(),
            origin: self.origin.clone(),
            fields,
        })
    }
}

/// A stored normalized document carries the identity declaration order in `identity_order`
/// (§6), because JSON stores such as Postgres `jsonb` do not keep object key order.
fn reorder_identity(identity: &mut FastIndexMap<String, IdentityField>, order: Option<&Json>) {
    let Some(Json::Array(names)) = order else {
        return;
    };
    let names: Vec<&str> = names.iter().filter_map(Json::as_str).collect();
    let is_permutation =
        names.len() == identity.len() && names.iter().all(|n| identity.contains_key(*n));
    if is_permutation {
        identity.sort_by_cached_key(|k, _| names.iter().position(|n| n == k));
    }
}

/// The JSON kind of a value, for messages.
pub(crate) fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(n) if n.is_f64() => "a float",
        Json::Number(_) => "an integer",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // CONTRACTS A12
    #[test]
    fn thresholds_follow_the_duration_grammar() {
        for ok in ["90d", "24h", "90m", "45s", " 5d ", "+5d", "05d", "0d"] {
            assert!(parse_threshold(ok).is_ok(), "{ok} should parse");
        }
        for bad in ["5D", "1.5d", "5", "d", "-5d", "5 d", "1w", "", "é"] {
            assert!(parse_threshold(bad).is_err(), "{bad} should fail");
        }
        assert_eq!(parse_threshold("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_threshold("99999999999999999d")
            .unwrap_err()
            .contains("too large"));
    }
}
