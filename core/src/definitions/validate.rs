//! Semantic validation (DEFINITIONS.md §7.2) and warnings (§7.4, and the PROPOSED warnings of
//! §7.3). Every rule is checked and every finding collected; nothing stops at the first.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value as Json;

use super::model::*;
use super::parse::kind;
use super::Diagnostic;
use crate::expr::Expr;
use crate::fasthash::FastIndexMap;

/// The findings of semantic validation.
#[derive(Debug, Default)]
pub struct Findings {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

const CARDINALITIES: [&str; 4] = ["has_many", "has_one", "belongs_to", "many_to_many"];
const SYSTEM_COLUMNS: [&str; 6] = [
    "valid_from",
    "valid_to",
    "merged_into",
    "last_event_time",
    "state_entered_time",
    "created_time",
];

static NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^[A-Za-z_][A-Za-z0-9_]*$").expect("name pattern"));

/// Runs every semantic rule and warning over a definition set.
pub fn check(defs: &Definitions) -> Findings {
    let mut f = Findings::default();
    for entity in defs.entities.values() {
        EntityCheck::new(defs, entity, &mut f).run();
    }
    for source in defs.sources.values() {
        check_source(defs, source, &mut f);
    }
    for schema in defs.schemas.values() {
        check_schema(schema, &mut f);
    }
    if !defs.schemas.is_empty() {
        check_schema_coverage(defs, &mut f);
    }
    f
}

fn err(f: &mut Findings, origin: &Origin, path: impl Into<String>, msg: impl Into<String>) {
    f.errors
        .push(Diagnostic::new(origin.file.clone(), path, msg));
}

fn warn(f: &mut Findings, origin: &Origin, path: impl Into<String>, msg: impl Into<String>) {
    f.warnings
        .push(Diagnostic::new(origin.file.clone(), path, msg));
}

/// Whether a literal fits a declared type (§7.2 item 4); `bool_as_number` is the `set value`
/// quirk of item 8 (booleans accepted for number and integer properties).
fn literal_fits(value: &Json, ty: PropertyType, bool_as_number: bool) -> bool {
    match (ty, value) {
        (PropertyType::String | PropertyType::DateTime, Json::String(_)) => true,
        (PropertyType::Number, Json::Number(_)) => true,
        (PropertyType::Integer, Json::Number(n)) => n.is_i64() || n.is_u64(),
        (PropertyType::Boolean, Json::Bool(_)) => true,
        (PropertyType::Number | PropertyType::Integer, Json::Bool(_)) => bool_as_number,
        _ => false,
    }
}

fn show(v: &Json) -> String {
    crate::canonical::to_canonical_json(v)
}

struct EntityCheck<'a> {
    defs: &'a Definitions,
    e: &'a Entity,
    f: &'a mut Findings,
}

impl<'a> EntityCheck<'a> {
    fn new(defs: &'a Definitions, e: &'a Entity, f: &'a mut Findings) -> Self {
        EntityCheck { defs, e, f }
    }

    fn error(&mut self, path: String, msg: impl Into<String>) {
        err(self.f, &self.e.origin, path, msg);
    }

    fn warning(&mut self, path: String, msg: impl Into<String>) {
        warn(self.f, &self.e.origin, path, msg);
    }

    fn run(mut self) {
        let e = self.e;
        let name = &e.name;
        if !NAME_RE.is_match(name) {
            self.error(
                name.clone(),
                format!("entity type name '{name}' must be a letter or '_' followed by letters, digits or '_'"),
            );
        }
        if e.states.is_empty() {
            self.error(format!("{name}.states"), "at least one state is required");
        } else if !e.states.contains_key(&e.starts) {
            self.error(
                format!("{name}.starts"),
                format!("starts state '{}' is not a declared state", e.starts),
            );
        }
        for (field, spec) in &e.identity {
            if field.contains(':') {
                self.error(
                    format!("{name}.identity.{field}"),
                    format!("identity field name '{field}' must not contain ':'"),
                );
            }
            if spec.match_mode != "exact" && spec.match_mode != "case_insensitive" {
                self.warning(
                    format!("{name}.identity.{field}.match"),
                    format!(
                        "match '{}' is not 'exact' or 'case_insensitive'; it has no effect at runtime (only 'normalize' changes hint values)",
                        spec.match_mode
                    ),
                );
            }
        }
        for (pname, prop) in &e.properties {
            self.property(&format!("{name}.properties.{pname}"), pname, prop, true);
        }
        for (i, rel) in e.relationships.iter().enumerate() {
            self.relationship(i, rel);
        }
        self.effects_and_handlers();
        if !e.states.is_empty() && e.states.contains_key(&e.starts) {
            self.creatable_and_reachable();
        }
        self.write_never_read();
        self.unknown_functions();
    }

    fn property(&mut self, path: &str, pname: &str, prop: &Property, entity_property: bool) {
        let ename = &self.e.name;
        if !NAME_RE.is_match(pname) {
            self.error(
                path.to_string(),
                format!("property name '{pname}' must be a letter or '_' followed by letters, digits or '_'"),
            );
        }
        if entity_property {
            let own = [format!("{ename}_id"), format!("{ename}_state")];
            if own.iter().any(|c| c == pname) || SYSTEM_COLUMNS.contains(&pname) {
                self.error(
                    path.to_string(),
                    format!("property '{pname}' collides with system column '{pname}'"),
                );
            }
        }
        if prop.treatment.is_some() && prop.sensitive.is_none() {
            self.warning(
                path.to_string(),
                format!("property '{pname}' has a 'treatment' but no 'sensitive' marker, so redaction never applies it"),
            );
        }
        let Some(ty) = prop.kind else {
            self.error(
                format!("{path}.type"),
                format!(
                    "unknown type '{}' (expected string, number, integer, boolean or datetime)",
                    prop.type_name
                ),
            );
            return;
        };
        if let Some(d) = &prop.default {
            if !literal_fits(d, ty, false) {
                self.error(
                    format!("{path}.default"),
                    format!("default {} does not match type '{ty}'", show(d)),
                );
            }
        }
        match &prop.allowed {
            Some(Json::Array(values)) => {
                for (i, v) in values.iter().enumerate() {
                    if !literal_fits(v, ty, false) {
                        self.error(
                            format!("{path}.allowed[{i}]"),
                            format!("allowed value {} does not match type '{ty}'", show(v)),
                        );
                    }
                }
            }
            Some(other) => self.error(
                format!("{path}.allowed"),
                format!("'allowed' must be a list, got {}", kind(other)),
            ),
            None => {}
        }
    }

    fn relationship(&mut self, i: usize, rel: &Relationship) {
        let name = &self.e.name;
        let path = format!("{name}.relationships[{i}]");
        if rel.relationship.contains(':') {
            self.error(
                format!("{path}.type"),
                format!(
                    "relationship type '{}' must not contain ':'",
                    rel.relationship
                ),
            );
        } else if !NAME_RE.is_match(&rel.relationship) {
            self.error(
                format!("{path}.type"),
                format!(
                    "relationship type '{}' must be a letter or '_' followed by letters, digits or '_'",
                    rel.relationship
                ),
            );
        }
        let valid_cardinality = CARDINALITIES.contains(&rel.cardinality.as_str());
        if !valid_cardinality {
            self.error(
                format!("{path}.cardinality"),
                format!(
                    "unknown cardinality '{}' (expected has_many, has_one, belongs_to or many_to_many)",
                    rel.cardinality
                ),
            );
        }
        for (pname, prop) in &rel.properties {
            self.property(&format!("{path}.properties.{pname}"), pname, prop, false);
        }
        let Some(target) = self.defs.entities.get(&rel.target) else {
            self.error(
                format!("{path}.target"),
                format!("target entity '{}' is not defined", rel.target),
            );
            return;
        };
        let Some(inverse) = target.relationships.iter().find(|r| r.target == *name) else {
            self.error(
                path,
                format!(
                    "relationship '{}' to '{}' has no inverse: '{}' declares no relationship whose target is '{name}'",
                    rel.relationship, rel.target, rel.target
                ),
            );
            return;
        };
        let pair = (rel.cardinality.as_str(), inverse.cardinality.as_str());
        let valid_pair = matches!(
            pair,
            ("has_many", "belongs_to")
                | ("has_one", "belongs_to")
                | ("belongs_to", "has_many")
                | ("belongs_to", "has_one")
                | ("many_to_many", "many_to_many")
        );
        if valid_cardinality && !valid_pair {
            self.error(
                path,
                format!(
                    "cardinality mismatch: '{}' is {} but its inverse '{}' on '{}' is {}",
                    rel.relationship, pair.0, inverse.relationship, rel.target, pair.1
                ),
            );
        }
    }

    /// Every effect of every handler and time rule (§7.2 item 8) and the PROPOSED warnings
    /// about effects (§7.3, §7.4 item 5).
    fn effects_and_handlers(&mut self) {
        let e = self.e;
        let name = &e.name;
        for (sname, state) in &e.states {
            for (ev, handler) in &state.when {
                let hpath = format!("{name}.states.{sname}.when.{ev}");
                self.handler_effects(&hpath, ev, &handler.effects, true);
            }
            for (i, rule) in state.after.iter().enumerate() {
                let rpath = format!("{name}.states.{sname}.after[{i}]");
                self.effect_list(&format!("{rpath}.effects"), &rule.effects);
            }
        }
        for (ev, handler) in &e.always {
            let hpath = format!("{name}.always.{ev}");
            self.handler_effects(&hpath, ev, &handler.effects, true);
        }
    }

    fn handler_effects(&mut self, hpath: &str, event: &str, effects: &[Effect], relates: bool) {
        self.effect_list(&format!("{hpath}.effects"), effects);
        if !relates {
            return;
        }
        for (i, effect) in effects.iter().enumerate() {
            if let Effect::Relate { target, hints, .. } = effect {
                self.relate_hints(
                    &format!("{hpath}.effects[{i}].relate"),
                    event,
                    target,
                    hints,
                );
            }
        }
    }

    fn effect_list(&mut self, path: &str, effects: &[Effect]) {
        for (i, effect) in effects.iter().enumerate() {
            self.effect(&format!("{path}[{i}]"), effect);
        }
    }

    fn effect(&mut self, path: &str, effect: &Effect) {
        let e = self.e;
        match effect {
            Effect::Create => {}
            Effect::Transition { to } => {
                if !e.states.contains_key(to) {
                    self.error(
                        format!("{path}.transition.to"),
                        format!("unknown state '{to}'"),
                    );
                }
            }
            Effect::Set {
                property,
                from,
                value,
                compute,
                ..
            } => {
                let sources =
                    from.is_some() as usize + value.is_some() as usize + compute.is_some() as usize;
                let prop = e.properties.get(property);
                if prop.is_none() {
                    self.error(
                        format!("{path}.set.property"),
                        format!("property '{property}' is not declared on '{}'", e.name),
                    );
                }
                if sources == 0 {
                    self.error(
                        format!("{path}.set"),
                        format!("'set' of '{property}' has no value source: give one of 'from', 'value' or 'compute' (a literal null is written as compute: \"null\")"),
                    );
                } else if sources > 1 {
                    self.error(
                        format!("{path}.set"),
                        format!("'set' of '{property}' has more than one value source: give only one of 'from', 'value' or 'compute'"),
                    );
                } else if let (Some(v), Some(ty)) = (value, prop.and_then(|p| p.kind)) {
                    if !literal_fits(v, ty, true) {
                        self.error(
                            format!("{path}.set.value"),
                            format!(
                                "value {} does not match type '{ty}' of property '{property}'",
                                show(v)
                            ),
                        );
                    }
                }
            }
            Effect::Increment { property, by } => match e.properties.get(property) {
                None => self.error(
                    format!("{path}.increment.property"),
                    format!("property '{property}' is not declared on '{}'", e.name),
                ),
                Some(p) => {
                    if let Some(ty) = p.kind.filter(|t| !t.is_numeric()) {
                        self.error(
                            format!("{path}.increment"),
                            format!("cannot increment '{property}': its type is '{ty}', not number or integer"),
                        );
                    }
                    if !by.is_number() {
                        self.warning(
                            format!("{path}.increment.by"),
                            format!(
                                "'by' is {}, not a number; the increment will fail at runtime",
                                show(by)
                            ),
                        );
                    }
                }
            },
            Effect::Relate {
                relationship,
                target,
                hints,
                ..
            } => {
                let declared = self.defs.entities.values().any(|x| {
                    x.relationships
                        .iter()
                        .any(|r| &r.relationship == relationship)
                });
                if !declared {
                    self.warning(
                        format!("{path}.relate.type"),
                        format!("relationship type '{relationship}' is declared by no entity; its rows are never written"),
                    );
                }
                match self.defs.entities.get(target) {
                    None => self.warning(
                        format!("{path}.relate.target"),
                        format!("relate target '{target}' is not a defined entity type; it never finds a target"),
                    ),
                    Some(t) => {
                        for fields in hints.values() {
                            for field in fields {
                                if !t.identity.contains_key(field) {
                                    self.warning(
                                        format!("{path}.relate.hints"),
                                        format!("'{field}' is not an identity field of '{target}'; this relate hint can never match"),
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// §7.4 item 5: a `relate` hint the relating event does not carry for the target.
    fn relate_hints(
        &mut self,
        path: &str,
        event: &str,
        target: &str,
        hints: &FastIndexMap<String, Vec<String>>,
    ) {
        let e = self.e;
        let fields: Vec<&String> = hints.values().flatten().collect();
        for source in self.defs.sources.values() {
            let Some(sev) = source.events.get(event) else {
                continue;
            };
            let carried = sev.hints.get(target);
            for field in &fields {
                if !carried.is_some_and(|c| c.contains(field)) {
                    self.warning(
                        path.to_string(),
                        format!(
                            "'{}' relates on '{event}' to '{target}' by '{field}', but source '{}' does not list '{field}' among the '{target}' hints of '{event}': a target first seen in a later event is found by FULL builds and rebuilds but not by incremental builds",
                            e.name, source.name
                        ),
                    );
                }
            }
        }
    }

    /// §7.2 items 9–10 and the dead-end warning of §7.4 item 2.
    fn creatable_and_reachable(&mut self) {
        let e = self.e;
        let name = &e.name;
        let creatable = e.states[&e.starts].when.values().any(Handler::creates);
        if !creatable {
            self.error(
                format!("{name}.states.{}", e.starts),
                format!(
                    "starts state '{}' has no handler with a 'create' effect, so entities cannot be created",
                    e.starts
                ),
            );
        }
        let always_targets: Vec<&str> = e
            .always
            .values()
            .flat_map(|h| transitions(&h.effects))
            .collect();
        let edges = |state: &'a State| state_edges(state, &always_targets);
        let mut seen: HashSet<&str> = HashSet::from([e.starts.as_str()]);
        let mut queue = VecDeque::from([e.starts.as_str()]);
        while let Some(s) = queue.pop_front() {
            if let Some(state) = e.states.get(s) {
                for t in edges(state) {
                    if e.states.contains_key(t) && seen.insert(t) {
                        queue.push_back(t);
                    }
                }
            }
        }
        for (sname, state) in &e.states {
            if !seen.contains(sname.as_str()) {
                self.error(
                    format!("{name}.states.{sname}"),
                    format!("state '{sname}' is unreachable from '{}'", e.starts),
                );
            }
            let dead_end = edges(state).is_empty()
                && state.when.is_empty()
                && state.after.is_empty()
                && *sname != e.starts;
            if dead_end {
                self.warning(
                    format!("{name}.states.{sname}"),
                    format!(
                        "state '{sname}' is a dead end: no handlers, no time rules and no way out"
                    ),
                );
            }
        }
    }

    /// §7.4 item 4: a property written in a `when` handler but read by no guard, condition
    /// or computed property (a plain text test, as upstream does).
    fn write_never_read(&mut self) {
        let e = self.e;
        let mut written: Vec<&str> = Vec::new();
        for state in e.states.values() {
            for handler in state.when.values() {
                for effect in &handler.effects {
                    let p = match effect {
                        Effect::Set { property, .. } | Effect::Increment { property, .. } => {
                            property
                        }
                        _ => continue,
                    };
                    if !written.contains(&p.as_str()) {
                        written.push(p);
                    }
                }
            }
        }
        let mut readers: Vec<&str> = Vec::new();
        let add_handler = |h: &'a Handler, readers: &mut Vec<&'a str>| {
            readers.extend(h.guard.as_ref().map(Expr::text));
            for effect in &h.effects {
                if let Some(c) = condition(effect) {
                    readers.push(c.text());
                }
            }
        };
        for state in e.states.values() {
            for h in state.when.values() {
                add_handler(h, &mut readers);
            }
            for rule in &state.after {
                readers.extend(rule.effects.iter().filter_map(condition).map(Expr::text));
            }
        }
        for h in e.always.values() {
            add_handler(h, &mut readers);
        }
        readers.extend(
            e.properties
                .values()
                .filter_map(|p| p.compute.as_ref().map(Expr::text)),
        );
        for p in written {
            if e.identity.contains_key(p) || !e.properties.contains_key(p) {
                continue;
            }
            let needle = format!("entity.{p}");
            if !readers.iter().any(|r| r.contains(&needle)) {
                self.warning(
                    format!("{}.properties.{p}", e.name),
                    format!("property '{p}' is written but never read by a guard, condition or computed property"),
                );
            }
        }
    }

    /// PROPOSED warnings of §7.3: calls of functions that do not exist or with the wrong
    /// number of arguments fail only at runtime, so registration points them out.
    fn unknown_functions(&mut self) {
        let e = self.e;
        let mut exprs: Vec<(String, &Expr)> = Vec::new();
        let name = &e.name;
        for (field, spec) in &e.identity {
            if let Some(x) = &spec.normalize {
                exprs.push((format!("{name}.identity.{field}.normalize"), x));
            }
        }
        for (p, prop) in &e.properties {
            if let Some(x) = &prop.compute {
                exprs.push((format!("{name}.properties.{p}.compute"), x));
            }
        }
        let mut handler_exprs = |path: String, h: &'a Handler| {
            if let Some(g) = &h.guard {
                exprs.push((format!("{path}.guard"), g));
            }
            push_effect_exprs(&mut exprs, &format!("{path}.effects"), &h.effects);
        };
        for (s, state) in &e.states {
            for (ev, h) in &state.when {
                handler_exprs(format!("{name}.states.{s}.when.{ev}"), h);
            }
        }
        for (ev, h) in &e.always {
            handler_exprs(format!("{name}.always.{ev}"), h);
        }
        for (s, state) in &e.states {
            for (i, rule) in state.after.iter().enumerate() {
                push_effect_exprs(
                    &mut exprs,
                    &format!("{name}.states.{s}.after[{i}].effects"),
                    &rule.effects,
                );
            }
        }
        for (path, x) in exprs {
            for problem in crate::expr::call_problems(x) {
                self.warning(
                    path.clone(),
                    format!("{problem}; the expression will fail when evaluated"),
                );
            }
        }
    }
}

fn push_effect_exprs<'a>(out: &mut Vec<(String, &'a Expr)>, path: &str, effects: &'a [Effect]) {
    for (i, effect) in effects.iter().enumerate() {
        match effect {
            Effect::Set {
                compute, condition, ..
            } => {
                if let Some(c) = compute {
                    out.push((format!("{path}[{i}].set.compute"), c));
                }
                if let Some(c) = condition {
                    out.push((format!("{path}[{i}].set.condition"), c));
                }
            }
            Effect::Relate {
                condition: Some(c), ..
            } => out.push((format!("{path}[{i}].relate.condition"), c)),
            _ => {}
        }
    }
}

/// Outgoing edges of a state in the reachability graph (§7.2 item 10): its handlers' and
/// time rules' transitions, plus every `always` transition.
fn state_edges<'s>(state: &'s State, always_targets: &[&'s str]) -> Vec<&'s str> {
    let mut out: Vec<&str> = state
        .when
        .values()
        .flat_map(|h| transitions(&h.effects))
        .collect();
    out.extend(state.after.iter().flat_map(|r| transitions(&r.effects)));
    out.extend(always_targets.iter().copied());
    out
}

fn transitions(effects: &[Effect]) -> impl Iterator<Item = &str> {
    effects.iter().filter_map(|e| match e {
        Effect::Transition { to } => Some(to.as_str()),
        _ => None,
    })
}

fn condition(effect: &Effect) -> Option<&Expr> {
    match effect {
        Effect::Set { condition, .. } | Effect::Relate { condition, .. } => condition.as_ref(),
        _ => None,
    }
}

fn check_source(defs: &Definitions, s: &Source, f: &mut Findings) {
    let o = &s.origin;
    let name = &s.name;
    if s.event_type_field.is_empty() {
        err(
            f,
            o,
            format!("{name}.event_type"),
            "'event_type' must not be empty",
        );
    }
    if s.timestamp_field.is_empty() {
        err(
            f,
            o,
            format!("{name}.timestamp"),
            "'timestamp' must not be empty",
        );
    }
    let mut raw_types: Vec<(&str, &str)> = Vec::new();
    for (ev, event) in &s.events {
        let path = format!("{name}.events.{ev}");
        let raw = event.effective_raw_type();
        if let Some((other, _)) = raw_types.iter().find(|(_, r)| *r == raw) {
            err(
                f,
                o,
                path.clone(),
                format!("events '{other}' and '{ev}' both select raw type '{raw}'; each raw type must select one event"),
            );
        }
        raw_types.push((ev, raw));
        if event.raw_hints.is_none() {
            err(
                f,
                o,
                format!("{path}.hints"),
                format!("event '{ev}' must have at least one identity hint"),
            );
        }
        for (field, mapping) in &event.mappings {
            if mapping.has_both {
                err(
                    f,
                    o,
                    format!("{path}.mappings.{field}"),
                    "a mapping cannot have both 'from' and 'compute'",
                );
            }
        }
        for (entity, fields) in &event.hints {
            let hpath = format!("{path}.hints.{entity}");
            let Some(target) = defs.entities.get(entity) else {
                err(
                    f,
                    o,
                    hpath,
                    format!("entity type '{entity}' is not defined"),
                );
                continue;
            };
            for field in fields {
                if !target.identity.contains_key(field) {
                    err(
                        f,
                        o,
                        hpath.clone(),
                        format!("'{field}' is not an identity field of '{entity}'"),
                    );
                }
            }
            // §7.4 item 3: events hinted for an entity that no handler of it takes.
            let handled = target.always.contains_key(ev)
                || target.states.values().any(|st| st.when.contains_key(ev));
            if !handled {
                warn(
                    f,
                    o,
                    path.clone(),
                    format!("event '{ev}' is hinted for '{entity}' but no handler of '{entity}' takes it; these events will be silently ignored by '{entity}'"),
                );
            }
        }
        if let Some(ids) = &s.event_id {
            for field in ids.iter().filter(|id| !event.mappings.contains_key(*id)) {
                warn(
                    f,
                    o,
                    format!("{name}.event_id"),
                    format!("event_id field '{field}' is not mapped by event '{ev}', so it never distinguishes those events"),
                );
            }
        }
    }
}

const NUMERIC_TYPES: [&str; 2] = ["number", "integer"];

fn check_schema(schema: &Schema, f: &mut Findings) {
    let o = &schema.origin;
    for (field, spec) in &schema.fields {
        let path = format!("{}.fields.{field}", schema.name);
        if PropertyType::parse(&spec.type_name).is_none() {
            err(
                f,
                o,
                format!("{path}.type"),
                format!(
                    "unknown type '{}' (expected string, number, integer, boolean or datetime)",
                    spec.type_name
                ),
            );
            continue;
        }
        let numeric = NUMERIC_TYPES.contains(&spec.type_name.as_str());
        for (key, present) in [("min", spec.min.is_some()), ("max", spec.max.is_some())] {
            if present && !numeric {
                err(
                    f,
                    o,
                    path.clone(),
                    format!("'{key}' constraint only applies to numeric types"),
                );
            }
        }
        let string = spec.type_name == "string";
        for (key, present) in [
            ("min_length", spec.min_length.is_some()),
            ("regex", spec.regex.is_some()),
        ] {
            if present && !string {
                err(
                    f,
                    o,
                    path.clone(),
                    format!("'{key}' constraint only applies to string fields"),
                );
            }
        }
    }
}

/// §7.2 item 21: once any schema exists, every handled and produced event type needs one,
/// and each source event's mappings must agree with its schema.
fn check_schema_coverage(defs: &Definitions, f: &mut Findings) {
    for e in defs.entities.values() {
        let mut handled: BTreeSet<(String, &str)> = BTreeSet::new();
        for (s, state) in &e.states {
            for ev in state.when.keys() {
                handled.insert((format!("{}.states.{s}.when.{ev}", e.name), ev));
            }
        }
        for ev in e.always.keys() {
            handled.insert((format!("{}.always.{ev}", e.name), ev));
        }
        for (path, ev) in handled {
            if !defs.schemas.contains_key(ev) {
                err(
                    f,
                    &e.origin,
                    path,
                    format!("no schema is defined for event type '{ev}' (once any schema exists, every handled event type needs one)"),
                );
            }
        }
    }
    for s in defs.sources.values() {
        for (ev, event) in &s.events {
            let path = format!("{}.events.{ev}", s.name);
            let Some(schema) = defs.schemas.get(ev) else {
                err(
                    f,
                    &s.origin,
                    path,
                    format!("no schema is defined for event type '{ev}' (once any schema exists, every source event needs one)"),
                );
                continue;
            };
            for (field, spec) in &schema.fields {
                if spec.required && !event.mappings.contains_key(field) {
                    err(
                        f,
                        &s.origin,
                        format!("{path}.mappings"),
                        format!(
                            "schema '{ev}' requires field '{field}', which this event does not map"
                        ),
                    );
                }
            }
            for field in event.mappings.keys() {
                if !schema.fields.contains_key(field) {
                    err(
                        f,
                        &s.origin,
                        format!("{path}.mappings.{field}"),
                        format!("field '{field}' is not declared in schema '{ev}'"),
                    );
                }
            }
        }
    }
}
