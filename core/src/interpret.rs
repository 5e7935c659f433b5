//! Interpretation (PIPELINE.md §6) and time rules (§7.3): one entity's state machine applied
//! to one event, or evaluated up to an instant. Each call works on one entity's working
//! state and emits complete snapshots; nothing here knows about other entities, storage or
//! ordering across entities.

use std::collections::BTreeMap;

use crate::definitions::{Effect, Entity, Handler, TimeRuleKind};
use crate::expr::{Expr, Scope};
use crate::fasthash::{ByName, FastIndexMap};
use crate::value::{Instant, Value};

/// The working state of an entity that exists (§1 "working state").
#[derive(Debug, Clone, PartialEq)]
pub struct EntityState {
    pub state: String,
    /// Property values in declaration order.
    pub properties: Vec<Value>,
    pub last_event_time: Option<Instant>,
    pub state_entered_time: Option<Instant>,
    pub created_time: Option<Instant>,
    /// Time-rule index → the reference instant at which it fired in this visit (§7.3).
    pub marks: BTreeMap<usize, Instant>,
}

/// The greatest instant an entity has processed, and whether a time rule set it (§10.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    pub at: Instant,
    pub by_rule: bool,
}

/// Everything the engine keeps per entity id between events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slot {
    /// `None` while the entity does not exist (no `create` has run).
    pub entity: Option<EntityState>,
    pub horizon: Option<Horizon>,
}

impl Slot {
    fn raise_horizon(&mut self, at: Instant, by_rule: bool) {
        let keep = match self.horizon {
            Some(h) if h.at > at => true,
            // At an equal instant a rule firing is recorded (§7.3 step 2).
            Some(h) if h.at == at => !by_rule || h.by_rule,
            _ => false,
        };
        if !keep {
            self.horizon = Some(Horizon { at, by_rule });
        }
    }
}

/// A relationship record attached to a snapshot (§6.6).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RelationshipRecord {
    pub relationship_type: String,
    pub target_entity_id: String,
}

/// The complete state of an entity after an event or a time-rule firing (§6.9).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub state: String,
    pub properties: Vec<Value>,
    pub relationships: Vec<RelationshipRecord>,
    pub last_event_time: Option<Instant>,
    pub state_entered_time: Option<Instant>,
    pub created_time: Option<Instant>,
    pub valid_from: Instant,
    /// True for a time-rule firing (counted by tick results).
    pub from_rule: bool,
    /// The firing applied a transition.
    pub transitioned: bool,
}

impl Snapshot {
    fn of(
        e: &EntityState,
        valid_from: Instant,
        relationships: Vec<RelationshipRecord>,
    ) -> Snapshot {
        Snapshot {
            state: e.state.clone(),
            properties: e.properties.clone(),
            relationships,
            last_event_time: e.last_event_time,
            state_entered_time: e.state_entered_time,
            created_time: e.created_time,
            valid_from,
            from_rule: false,
            transitioned: false,
        }
    }
}

/// An event as the interpreter sees it.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub timestamp: Instant,
    pub data: &'a FastIndexMap<String, Value>,
}

/// Identity lookups for `relate` (§6.6): the entity id a key `(type, field, value)` maps to,
/// and the target type's `normalize` for hint values.
pub trait RelateLookup {
    fn lookup(&self, entity_type: &str, field: &str, value: &str) -> Option<String>;
    fn normalize_hint(&self, entity_type: &str, field: &str, value: &str) -> String;
}

/// A lookup that never finds anything (entities without relationships, tests).
pub struct NoRelations;

impl RelateLookup for NoRelations {
    fn lookup(&self, _: &str, _: &str, _: &str) -> Option<String> {
        None
    }
    fn normalize_hint(&self, _: &str, _: &str, value: &str) -> String {
        value.to_string()
    }
}

/// One entity type's state machine.
pub struct Machine<'d> {
    pub def: &'d Entity,
    /// The job's `as_of`, which `now()` returns.
    pub now: Instant,
}

/// The cap on time-rule firings in one evaluation (§7.3 step 3).
const MAX_FIRINGS: usize = 1000;

impl<'d> Machine<'d> {
    pub fn new(def: &'d Entity, now: Instant) -> Self {
        Machine { def, now }
    }

    /// Interprets one event for one entity (§6.1). Snapshots are appended to `out`; on
    /// failure the entity keeps the state it had after its pre-event time-rule evaluation
    /// (snapshots of that evaluation stay in `out`) and the error is returned.
    pub fn apply_event(
        &self,
        slot: &mut Slot,
        event: &EventView<'_>,
        relate: &dyn RelateLookup,
        out: &mut Vec<Snapshot>,
    ) -> Result<(), String> {
        let existed = slot.entity.is_some();
        if existed {
            self.evaluate_rules(slot, event.timestamp, out)?;
        }
        let mut undo = Undo::of(slot.entity.as_ref());
        let result = self.run_handlers(slot, event, relate, out, &mut undo);
        if slot.entity.is_some() {
            slot.raise_horizon(event.timestamp, false);
        }
        if result.is_err() {
            match slot.entity.as_mut() {
                Some(entity) if existed => undo.restore(entity),
                _ => slot.entity = None,
            }
        }
        result
    }

    fn run_handlers(
        &self,
        slot: &mut Slot,
        event: &EventView<'_>,
        relate: &dyn RelateLookup,
        out: &mut Vec<Snapshot>,
        undo: &mut Undo,
    ) -> Result<(), String> {
        let def = self.def;
        let mut handlers: [Option<&Handler>; 2] = [None, None];
        handlers[0] = match &slot.entity {
            Some(e) => def
                .states
                .by_name(&e.state)
                .and_then(|s| s.when.by_name(event.event_type)),
            None => def
                .states
                .by_name(&def.starts)
                .and_then(|s| s.when.by_name(event.event_type))
                .filter(|h| h.creates()),
        };
        handlers[1] = def.always.by_name(event.event_type);
        let mut changed = false;
        let mut records = Vec::new();
        for handler in handlers.into_iter().flatten() {
            if let Some(guard) = &handler.guard {
                let scope = self.scope(event.data, slot.entity.as_ref());
                match guard.eval(&scope) {
                    Ok(Value::Bool(true)) => {}
                    Ok(Value::Bool(false)) => continue,
                    Ok(other) => {
                        return Err(format!(
                            "guard must evaluate to boolean, got {} ({})",
                            other.kind(),
                            guard.text()
                        ))
                    }
                    Err(e) => {
                        return Err(format!("guard evaluation failed: {e} ({})", guard.text()))
                    }
                }
            }
            for effect in &handler.effects {
                changed |= self.apply_effect(slot, effect, event, relate, &mut records, undo)?;
            }
        }
        if !changed {
            return Ok(());
        }
        let Some(entity) = slot.entity.as_mut() else {
            return Ok(());
        };
        entity.last_event_time = Some(event.timestamp);
        self.recompute(entity)?;
        records.sort();
        records.dedup();
        out.push(Snapshot::of(entity, event.timestamp, records));
        Ok(())
    }

    fn scope<'a>(
        &'a self,
        data: &'a FastIndexMap<String, Value>,
        entity: Option<&'a EntityState>,
    ) -> HandlerScope<'a> {
        HandlerScope {
            data: Some(data),
            def: self.def,
            properties: entity.map(|e| e.properties.as_slice()),
            now: self.now,
        }
    }

    fn property_index(&self, name: &str) -> Result<usize, String> {
        self.def
            .properties
            .index_by_name(name)
            .ok_or_else(|| format!("property '{name}' is not declared on '{}'", self.def.name))
    }

    fn apply_effect(
        &self,
        slot: &mut Slot,
        effect: &Effect,
        event: &EventView<'_>,
        relate: &dyn RelateLookup,
        records: &mut Vec<RelationshipRecord>,
        undo: &mut Undo,
    ) -> Result<bool, String> {
        let ts = event.timestamp;
        match effect {
            Effect::Create => {
                if slot.entity.is_some() {
                    return Ok(false);
                }
                slot.entity = Some(EntityState {
                    state: self.def.starts.clone(),
                    properties: self
                        .def
                        .properties
                        .values()
                        .map(|p| p.default.as_ref().map(Value::from_json).unwrap_or_default())
                        .collect(),
                    last_event_time: None,
                    state_entered_time: Some(ts),
                    created_time: Some(ts),
                    marks: BTreeMap::new(),
                });
                Ok(true)
            }
            Effect::Transition { to } => {
                let entity = slot
                    .entity
                    .as_mut()
                    .ok_or_else(|| format!("transition to '{to}' but entity doesn't exist"))?;
                undo.keep_state(entity);
                entity.state = to.clone();
                entity.state_entered_time = Some(ts);
                entity.marks.clear();
                Ok(true)
            }
            Effect::Set {
                property,
                from,
                value,
                compute,
                condition,
            } => {
                if slot.entity.is_none() {
                    return Err(format!(
                        "set property '{property}' but entity doesn't exist"
                    ));
                }
                if let Some(c) = condition {
                    if !self.condition_holds(c, event.data, slot.entity.as_ref())? {
                        return Ok(false);
                    }
                }
                let idx = self.property_index(property)?;
                let entity = slot.entity.as_ref().expect("checked above");
                let new = if let Some(path) = from {
                    self.read_from(path, Some(event.data), entity)
                } else if let Some(v) = value {
                    Value::from_json(v)
                } else if let Some(expr) = compute {
                    let scope = self.scope(event.data, Some(entity));
                    expr.eval(&scope)
                        .map_err(|e| format!("compute expression failed for '{property}': {e}"))?
                } else {
                    Value::Null
                };
                let entity = slot.entity.as_mut().expect("checked above");
                undo.set(entity, idx, new);
                Ok(true)
            }
            Effect::Increment { property, by } => {
                let entity = slot.entity.as_mut().ok_or_else(|| {
                    format!("increment property '{property}' but entity doesn't exist")
                })?;
                let idx = self.def.properties.index_by_name(property).ok_or_else(|| {
                    format!("increment '{property}' failed: property is not declared")
                })?;
                let by = Value::from_json(by);
                let sum = add(&entity.properties[idx], &by)
                    .map_err(|e| format!("increment '{property}' failed: {e}"))?;
                undo.set(entity, idx, sum);
                Ok(true)
            }
            Effect::Relate {
                relationship,
                target,
                hints,
                condition,
            } => {
                if let Some(c) = condition {
                    if !self.condition_holds(c, event.data, slot.entity.as_ref())? {
                        return Ok(false);
                    }
                }
                let mut keys: Vec<(&String, &Vec<String>)> = hints.iter().collect();
                keys.sort_by(|a, b| a.0.cmp(b.0));
                for field in keys.into_iter().flat_map(|(_, fields)| fields) {
                    let Some(Value::String(v)) = event.data.by_name(field) else {
                        continue;
                    };
                    let normalized = relate.normalize_hint(target, field, v);
                    if let Some(id) = relate.lookup(target, field, &normalized) {
                        records.push(RelationshipRecord {
                            relationship_type: relationship.clone(),
                            target_entity_id: id,
                        });
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }

    /// An effect condition: true runs the effect; false, Null or any non-Bool skips it; an
    /// evaluation error fails the event (§6.5).
    fn condition_holds(
        &self,
        c: &Expr,
        data: &FastIndexMap<String, Value>,
        entity: Option<&EntityState>,
    ) -> Result<bool, String> {
        match c.eval(&self.scope(data, entity)) {
            Ok(v) => Ok(matches!(v, Value::Bool(true))),
            Err(e) => Err(format!("condition evaluation failed: {e} ({})", c.text())),
        }
    }

    /// `set from`: `event.<f>` → data, `entity.<p>` → properties; only two segments count.
    fn read_from(
        &self,
        path: &str,
        data: Option<&FastIndexMap<String, Value>>,
        entity: &EntityState,
    ) -> Value {
        let mut parts = path.split('.');
        let (Some(head), Some(key)) = (parts.next(), parts.next()) else {
            return Value::Null;
        };
        match head {
            "event" => data
                .and_then(|d| d.by_name(key))
                .cloned()
                .unwrap_or_default(),
            "entity" => self
                .def
                .properties
                .index_by_name(key)
                .map(|i| entity.properties[i].clone())
                .unwrap_or_default(),
            _ => Value::Null,
        }
    }

    /// Computed properties (§6.7): every `compute` sees the properties as they were before
    /// this pass; results are assigned together.
    fn recompute(&self, entity: &mut EntityState) -> Result<(), String> {
        let mut results = Vec::new();
        {
            let scope = HandlerScope {
                data: None,
                def: self.def,
                properties: Some(&entity.properties),
                now: self.now,
            };
            for (i, (name, prop)) in self.def.properties.iter().enumerate() {
                if let Some(expr) = &prop.compute {
                    let v = expr
                        .eval(&scope)
                        .map_err(|e| format!("computed property '{name}' failed: {e}"))?;
                    results.push((i, v));
                }
            }
        }
        for (i, v) in results {
            entity.properties[i] = v;
        }
        Ok(())
    }

    /// Time rules up to `as_of` (§7.3): fires every due rule at its crossing instant,
    /// following cascades. On error the entity is left as it was and nothing is emitted.
    pub fn evaluate_rules(
        &self,
        slot: &mut Slot,
        as_of: Instant,
        out: &mut Vec<Snapshot>,
    ) -> Result<(), String> {
        let Some(start) = slot.entity.as_ref() else {
            return Ok(());
        };
        // Most evaluations find nothing due: check before copying the working state.
        if self.next_due(start, as_of).is_none() {
            return Ok(());
        }
        let mut work = slot.clone();
        let mark = out.len();
        match self.fire_due_rules(&mut work, as_of, out) {
            Ok(()) => {
                *slot = work;
                Ok(())
            }
            Err(e) => {
                out.truncate(mark);
                Err(e)
            }
        }
    }

    /// The earliest instant at which a time rule of the entity's current state can fire
    /// (`None`: none can, until an event changes the entity). Sweeps only need entities whose
    /// crossing is before their `as_of`.
    pub fn next_crossing(&self, slot: &Slot) -> Option<Instant> {
        let entity = slot.entity.as_ref()?;
        self.next_due(entity, chrono::DateTime::<chrono::Utc>::MAX_UTC)
            .map(|(crossing, _, _)| crossing)
    }

    /// The eligible rule with the earliest crossing (ties: the smallest index), with its
    /// crossing instant and reference (§7.3 step 1).
    fn next_due(&self, entity: &EntityState, as_of: Instant) -> Option<(Instant, usize, Instant)> {
        let state = self.def.states.by_name(&entity.state)?;
        let mut best: Option<(Instant, usize, Instant)> = None;
        for (i, rule) in state.after.iter().enumerate() {
            let reference = match rule.kind {
                TimeRuleKind::Inactivity => entity.last_event_time,
                TimeRuleKind::Expiration => entity.created_time,
                TimeRuleKind::StateDuration => entity.state_entered_time,
            };
            let Some(reference) = reference else { continue };
            let Ok(threshold) = chrono::Duration::from_std(rule.threshold) else {
                continue;
            };
            let Some(crossing) = reference.checked_add_signed(threshold) else {
                continue;
            };
            let crossing = match entity.state_entered_time {
                Some(entered) if entered > crossing => entered,
                _ => crossing,
            };
            let eligible = crossing < as_of && entity.marks.get(&i) != Some(&reference);
            if eligible && best.is_none_or(|(c, _, _)| crossing < c) {
                best = Some((crossing, i, reference));
            }
        }
        best
    }

    fn fire_due_rules(
        &self,
        slot: &mut Slot,
        as_of: Instant,
        out: &mut Vec<Snapshot>,
    ) -> Result<(), String> {
        let mut firings = 0;
        loop {
            let entity = slot
                .entity
                .as_mut()
                .expect("rules run on existing entities");
            let Some(state) = self.def.states.by_name(&entity.state) else {
                return Ok(());
            };
            let best = self.next_due(entity, as_of);
            let Some((crossing, index, reference)) = best else {
                return Ok(());
            };
            let rule = &state.after[index];
            let acts = rule
                .effects
                .iter()
                .any(|e| matches!(e, Effect::Transition { .. } | Effect::Set { .. }));
            if !acts {
                entity.marks.insert(index, reference);
                continue;
            }
            firings += 1;
            if firings > MAX_FIRINGS {
                return Err(format!(
                    "time rules of '{}' fired more than {MAX_FIRINGS} times in one evaluation (a zero-threshold cycle?)",
                    self.def.name
                ));
            }
            let mut transitioned = false;
            for effect in &rule.effects {
                match effect {
                    Effect::Transition { to } => {
                        entity.state = to.clone();
                        entity.state_entered_time = Some(crossing);
                        entity.last_event_time = Some(crossing);
                        entity.marks.clear();
                        transitioned = true;
                    }
                    Effect::Set {
                        property,
                        from,
                        value,
                        compute,
                        ..
                    } => {
                        let idx = self.property_index(property)?;
                        let new = if let Some(path) = from {
                            self.read_from(path, None, entity)
                        } else if let Some(v) = value {
                            Value::from_json(v)
                        } else if let Some(expr) = compute {
                            let scope = HandlerScope {
                                data: None,
                                def: self.def,
                                properties: Some(&entity.properties),
                                now: self.now,
                            };
                            expr.eval(&scope)
                                .map_err(|e| format!("time rule set of '{property}' failed: {e}"))?
                        } else {
                            Value::Null
                        };
                        entity.properties[idx] = new;
                    }
                    _ => {}
                }
            }
            if !transitioned {
                entity.marks.insert(index, reference);
            }
            self.recompute(entity)?;
            let mut snapshot = Snapshot::of(entity, crossing, Vec::new());
            snapshot.from_rule = true;
            snapshot.transitioned = transitioned;
            out.push(snapshot);
            slot.raise_horizon(crossing, true);
        }
    }
}

/// What an event's handlers changed in an entity that existed before the event, so that a
/// failure can put it back (§6.1). Kept as the changes are made, instead of a copy of the
/// whole working state taken before every event in case one fails. (Computed properties
/// change only once every handler has succeeded, so they need nothing kept.)
struct Undo {
    /// `last_event_time` before the event.
    last_event_time: Option<Instant>,
    /// The values properties had before they were replaced, in the order of replacement.
    properties: Vec<(usize, Value)>,
    /// The state, its entry time and the time-rule marks before the first transition.
    state: Option<(String, Option<Instant>, BTreeMap<usize, Instant>)>,
}

impl Undo {
    /// An undo of nothing yet, for an entity about to be given an event.
    fn of(entity: Option<&EntityState>) -> Undo {
        Undo {
            last_event_time: entity.and_then(|e| e.last_event_time),
            properties: Vec::new(),
            state: None,
        }
    }

    /// Sets property `idx` to `value`, keeping the value it replaces.
    fn set(&mut self, entity: &mut EntityState, idx: usize, value: Value) {
        let old = std::mem::replace(&mut entity.properties[idx], value);
        self.properties.push((idx, old));
    }

    /// Keeps what a transition changes, unless an earlier transition of the event did.
    fn keep_state(&mut self, entity: &EntityState) {
        if self.state.is_none() {
            self.state = Some((
                entity.state.clone(),
                entity.state_entered_time,
                entity.marks.clone(),
            ));
        }
    }

    /// Puts back what was kept: properties in the reverse order of their replacement.
    fn restore(self, entity: &mut EntityState) {
        for (idx, old) in self.properties.into_iter().rev() {
            entity.properties[idx] = old;
        }
        if let Some((state, entered, marks)) = self.state {
            entity.state = state;
            entity.state_entered_time = entered;
            entity.marks = marks;
        }
        entity.last_event_time = self.last_event_time;
    }
}

/// `increment` arithmetic (§6.2): Int + Int (checked), any Float operand → Float.
fn add(current: &Value, by: &Value) -> Result<Value, String> {
    match (current, by) {
        (Value::Int(a), Value::Int(b)) => a
            .checked_add(*b)
            .map(Value::Int)
            .ok_or_else(|| "integer overflow".to_string()),
        (Value::Int(a), Value::Float(b)) => Ok(Value::Float(*a as f64 + b)),
        (Value::Float(a), Value::Int(b)) => Ok(Value::Float(a + *b as f64)),
        (Value::Float(a), Value::Float(b)) => Ok(Value::Float(a + b)),
        (a, b) => Err(format!("cannot add {} and {}", a.kind(), b.kind())),
    }
}

/// The handler context (EXPRESSIONS.md §4): the event's data and the entity's properties.
struct HandlerScope<'a> {
    data: Option<&'a FastIndexMap<String, Value>>,
    def: &'a Entity,
    properties: Option<&'a [Value]>,
    now: Instant,
}

impl Scope for HandlerScope<'_> {
    fn event_field(&self, key: &str) -> Option<&Value> {
        self.data?.by_name(key)
    }
    fn entity_field(&self, key: &str) -> Option<&Value> {
        let props = self.properties?;
        self.def.properties.index_by_name(key).map(|i| &props[i])
    }
    fn now(&self) -> Instant {
        self.now
    }
}

/// The persisted form of a working-state slot (PIPELINE.md §1: working state, marks and
/// horizon included, values with their exact kinds).
///
/// A slot is stored once per entity and an incremental build rewrites the slots of every
/// entity it touches, so the form is compact: positional arrays, instants as epoch
/// nanoseconds. `[2, entity, horizon]` where `entity` is `null` or `[state, [properties as
/// typed JSON], last_event_time, state_entered_time, created_time, [[rule, instant], …]]`
/// and `horizon` is `null` or `[instant, by_rule]`; an instant is an integer of nanoseconds,
/// or typed JSON (`{"$dt": …}`) when it lies outside the 64-bit range (years before 1678 or
/// after 2261). The first form (an object with typed-JSON instants) still reads.
pub mod persist {
    use super::*;
    use crate::value::{instant_from_nanos, instant_nanos, typed};
    use serde_json::{json, Value as Json};

    /// The format tag leading the array form.
    const FORM: u64 = 2;

    fn instant(t: &Instant) -> Json {
        match i64::try_from(instant_nanos(t)) {
            Ok(n) => Json::from(n),
            Err(_) => typed::to_json(&Value::DateTime(*t)),
        }
    }

    fn optional(t: &Option<Instant>) -> Json {
        t.as_ref().map_or(Json::Null, instant)
    }

    fn read_instant(j: Option<&Json>) -> Option<Instant> {
        match j? {
            Json::Number(n) => instant_from_nanos(n.as_i64()?.into()),
            // Typed JSON (`{"$dt": …}`): the first form, and instants outside 64 bits.
            other => match typed::from_json(other) {
                Value::DateTime(t) => Some(t),
                _ => None,
            },
        }
    }

    pub fn to_json(slot: &Slot) -> Json {
        let entity = slot.entity.as_ref().map_or(Json::Null, |e| {
            json!([
                e.state,
                e.properties.iter().map(typed::to_json).collect::<Vec<_>>(),
                optional(&e.last_event_time),
                optional(&e.state_entered_time),
                optional(&e.created_time),
                e.marks
                    .iter()
                    .map(|(i, t)| json!([i, instant(t)]))
                    .collect::<Vec<_>>(),
            ])
        });
        let horizon = slot
            .horizon
            .map_or(Json::Null, |h| json!([instant(&h.at), h.by_rule]));
        json!([FORM, entity, horizon])
    }

    /// The text of `to_json(slot)`, written without building the JSON tree (an incremental
    /// build writes one per touched entity).
    pub fn to_text(slot: &Slot) -> String {
        use std::io::Write;
        let fail = "writing to memory";
        let mut out: Vec<u8> = Vec::with_capacity(192);
        let instant = |out: &mut Vec<u8>, t: &Instant| match i64::try_from(instant_nanos(t)) {
            Ok(n) => write!(out, "{n}").expect(fail),
            Err(_) => typed::write(out, &Value::DateTime(*t)),
        };
        let optional = |out: &mut Vec<u8>, t: &Option<Instant>| match t {
            Some(t) => instant(out, t),
            None => out.extend_from_slice(b"null"),
        };
        write!(out, "[{FORM},").expect(fail);
        match &slot.entity {
            None => out.extend_from_slice(b"null"),
            Some(e) => {
                out.push(b'[');
                typed::write_str(&mut out, &e.state);
                out.extend_from_slice(b",[");
                typed::write_separated(&mut out, &e.properties, typed::write);
                out.extend_from_slice(b"],");
                optional(&mut out, &e.last_event_time);
                out.push(b',');
                optional(&mut out, &e.state_entered_time);
                out.push(b',');
                optional(&mut out, &e.created_time);
                out.extend_from_slice(b",[");
                typed::write_separated(&mut out, &e.marks, |out, (i, t)| {
                    write!(out, "[{i},").expect(fail);
                    instant(out, t);
                    out.push(b']');
                });
                out.extend_from_slice(b"]]");
            }
        }
        out.push(b',');
        match &slot.horizon {
            None => out.extend_from_slice(b"null"),
            Some(h) => {
                out.push(b'[');
                instant(&mut out, &h.at);
                write!(out, ",{}]", h.by_rule).expect(fail);
            }
        }
        out.push(b']');
        String::from_utf8(out).expect("JSON text is UTF-8")
    }

    pub fn from_json(j: &Json) -> Slot {
        match j {
            Json::Array(parts) => Slot {
                entity: parts.get(1).and_then(read_entity),
                horizon: parts.get(2).and_then(|h| {
                    Some(Horizon {
                        at: read_instant(h.get(0))?,
                        by_rule: h.get(1).and_then(Json::as_bool).unwrap_or(false),
                    })
                }),
            },
            _ => from_object(j),
        }
    }

    fn read_marks(marks: Option<&Json>) -> BTreeMap<usize, Instant> {
        marks
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|m| Some((m.get(0)?.as_u64()? as usize, read_instant(m.get(1))?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn read_properties(properties: Option<&Json>) -> Vec<Value> {
        properties
            .and_then(Json::as_array)
            .map(|a| a.iter().map(typed::from_json).collect())
            .unwrap_or_default()
    }

    fn read_entity(e: &Json) -> Option<EntityState> {
        let e = e.as_array()?;
        Some(EntityState {
            state: e.first()?.as_str().unwrap_or_default().to_string(),
            properties: read_properties(e.get(1)),
            last_event_time: read_instant(e.get(2)),
            state_entered_time: read_instant(e.get(3)),
            created_time: read_instant(e.get(4)),
            marks: read_marks(e.get(5)),
        })
    }

    /// The first form: `{"entity": {"state", "properties", …}, "horizon": {"at", "by_rule"}}`.
    fn from_object(j: &Json) -> Slot {
        let entity = j
            .get("entity")
            .filter(|e| !e.is_null())
            .map(|e| EntityState {
                state: e["state"].as_str().unwrap_or_default().to_string(),
                properties: read_properties(e.get("properties")),
                last_event_time: read_instant(e.get("last_event_time")),
                state_entered_time: read_instant(e.get("state_entered_time")),
                created_time: read_instant(e.get("created_time")),
                marks: read_marks(e.get("marks")),
            });
        let horizon = j.get("horizon").filter(|h| !h.is_null()).and_then(|h| {
            Some(Horizon {
                at: read_instant(h.get("at"))?,
                by_rule: h["by_rule"].as_bool().unwrap_or(false),
            })
        });
        Slot { entity, horizon }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::value::instant_from_nanos;

        #[test]
        fn slots_round_trip_with_exact_kinds() {
            let t = instant_from_nanos(1_704_103_200_000_000_001).unwrap();
            let slot = Slot {
                entity: Some(EntityState {
                    state: "active".into(),
                    properties: vec![
                        Value::Int(2),
                        Value::Float(49.0),
                        Value::DateTime(t),
                        Value::Null,
                    ],
                    last_event_time: Some(t),
                    state_entered_time: None,
                    created_time: Some(t),
                    marks: BTreeMap::from([(1, t)]),
                }),
                horizon: Some(Horizon {
                    at: t,
                    by_rule: true,
                }),
            };
            let text = to_json(&slot).to_string();
            assert_eq!(to_text(&slot), text);
            assert_eq!(from_json(&serde_json::from_str(&text).unwrap()), slot);
            assert_eq!(from_json(&to_json(&Slot::default())), Slot::default());
            assert_eq!(
                to_text(&Slot::default()),
                to_json(&Slot::default()).to_string()
            );
        }

        #[test]
        fn instants_outside_the_nanosecond_range_and_before_1970_round_trip() {
            let far = chrono::DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999999999Z")
                .unwrap()
                .with_timezone(&chrono::Utc);
            let early = instant_from_nanos(-86_400_000_000_001).unwrap();
            let slot = Slot {
                entity: Some(EntityState {
                    state: "s".into(),
                    properties: vec![Value::DateTime(far)],
                    last_event_time: Some(early),
                    state_entered_time: Some(far),
                    created_time: None,
                    marks: BTreeMap::from([(0, far), (3, early)]),
                }),
                horizon: Some(Horizon {
                    at: far,
                    by_rule: false,
                }),
            };
            let text = to_json(&slot).to_string();
            assert_eq!(to_text(&slot), text);
            assert_eq!(from_json(&serde_json::from_str(&text).unwrap()), slot);
        }

        #[test]
        fn the_first_object_form_still_reads() {
            // A slot as builds stored it before the array form.
            let old = r#"{"entity":{"state":"expired","properties":["user1@x.example",null,0,{"$dt":"2024-01-01T00:00:00+00:00"}],"last_event_time":{"$dt":"2024-08-01T21:16:29.5+00:00"},"state_entered_time":null,"created_time":{"$dt":"2024-01-22T15:57:01+00:00"},"marks":[[1,{"$dt":"2024-03-01T00:00:00+00:00"}]]},"horizon":{"at":{"$dt":"2024-08-01T21:16:29.5+00:00"},"by_rule":true}}"#;
            let at = |s: &str| {
                chrono::DateTime::parse_from_rfc3339(s)
                    .unwrap()
                    .with_timezone(&chrono::Utc)
            };
            let expected = Slot {
                entity: Some(EntityState {
                    state: "expired".into(),
                    properties: vec![
                        Value::String("user1@x.example".into()),
                        Value::Null,
                        Value::Int(0),
                        Value::DateTime(at("2024-01-01T00:00:00Z")),
                    ],
                    last_event_time: Some(at("2024-08-01T21:16:29.5Z")),
                    state_entered_time: None,
                    created_time: Some(at("2024-01-22T15:57:01Z")),
                    marks: BTreeMap::from([(1, at("2024-03-01T00:00:00Z"))]),
                }),
                horizon: Some(Horizon {
                    at: at("2024-08-01T21:16:29.5Z"),
                    by_rule: true,
                }),
            };
            let read = from_json(&serde_json::from_str(old).unwrap());
            assert_eq!(read, expected);
            // Written again in the array form: the same slot, in under 60 % of the text.
            let again = to_json(&read).to_string();
            assert_eq!(from_json(&serde_json::from_str(&again).unwrap()), expected);
            assert!(again.len() * 10 < old.len() * 6, "{again}");
        }
    }
}
