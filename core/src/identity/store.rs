//! Where identity lives: the key → entity mappings, the entities known to exist and the
//! merge_log (PIPELINE.md §1). `IdentityStore` is the seam through which `defacto-jobs` keeps
//! them in a database; `MemoryIdentity` keeps them in ordered in-memory maps.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use rayon::prelude::*;

use super::key::Key;
use crate::fasthash::{FastMap, FastSet};
use crate::value::Instant;

/// The identity stores of PIPELINE.md §1 as resolution uses them. Implementations must be
/// read-your-writes: every call sees the effect of every earlier call.
pub trait IdentityStore {
    /// The entity `key` is mapped to. It must be current: a key never reads as mapped to an
    /// entity recorded as merged away (a caching implementation re-reads such a key, §5.2).
    fn get(&self, key: &Key) -> Option<String>;

    /// `get` of the key `(entity_type, field, value)`, for callers holding its parts: a store
    /// that can look them up as they are spares making the key (three strings) for every
    /// lookup, which is most of the resolve step's work per event.
    fn get_parts(&self, entity_type: &str, field: &str, value: &str) -> Option<String> {
        self.get(&Key::new(entity_type, field, value))
    }

    /// Maps `key` to `id` unless it is mapped already, and returns the id it is mapped to
    /// afterwards (`id`, or the mapping another writer made first). Registers `id` as an
    /// entity of `key.entity_type`.
    fn insert_if_absent(&mut self, key: Key, id: &str) -> String;

    /// The keys mapped to `id`, in ascending key order.
    fn keys_of(&self, id: &str) -> Vec<Key>;

    /// Re-points every key of `from` to `to` (§11.1 step 1) and returns how many moved.
    fn repoint(&mut self, from: &str, to: &str) -> usize;

    /// The entity type of `id` when `id` is an entity: it has `event_entities` rows — in the
    /// pure engine, some key was mapped to it once. Merged-away entities keep their type.
    fn entity_type(&self, id: &str) -> Option<String>;

    /// The winner `id` is recorded as merged into in merge_log.
    fn merged_into(&self, id: &str) -> Option<String>;

    /// The entities recorded in merge_log as merged into `id` (ascending).
    fn merged_from(&self, id: &str) -> Vec<String>;

    /// The merge_log timestamp of `id`'s merge, when it is merged away.
    fn merge_time(&self, id: &str) -> Option<Instant>;

    /// Records merge_log row `(from, into, ts)`; `false` (and nothing written) when `from` is
    /// already recorded as merged away, so every entity has at most one winner (§11.2).
    fn record_merge(&mut self, from: &str, into: &str, ts: Instant) -> bool;

    /// Forgets entity `id` (erase, §12.1): deletes its key mappings and every merge_log row
    /// naming it, and returns the deleted keys.
    fn remove_entity(&mut self, id: &str) -> Vec<Key>;
}

/// One merge_log row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeLogRow {
    pub from: String,
    pub into: String,
    pub timestamp: Instant,
}

/// Identity in memory. Lookups go through hash maps (resolution is a streaming hot path),
/// but nothing is ever iterated in hash order: every listing is sorted, so results never
/// depend on hashing.
#[derive(Debug, Clone, Default)]
pub struct MemoryIdentity {
    /// Key → entity, each mapping one allocation (`Mapping`), found by the key's parts.
    ids: FastSet<Mapping>,
    entities: FastMap<String, Entity>,
    winners: BTreeMap<String, (String, Instant)>,
    losers: BTreeMap<String, BTreeSet<String>>,
    /// What changed since loading (or the last `take_changes`), for writing back: journals
    /// in the order of change, repeats included, sorted and deduplicated when taken (a
    /// sorted set here cost a dozen string comparisons per new key on resolution's hot path).
    changed_keys: Vec<Key>,
    new_entities: Vec<String>,
    new_merges: BTreeSet<String>,
}

/// The changes to write back to a persistent identity store after a resolve pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityChanges {
    /// Keys inserted or re-pointed, with the entity each is mapped to now.
    pub mappings: Vec<(Key, String)>,
    /// Entities that appeared, with their type.
    pub entities: Vec<(String, String)>,
    /// merge_log rows recorded.
    pub merges: Vec<MergeLogRow>,
}

/// An entity some key was mapped to once; a merged-away entity keeps its record, keyless.
#[derive(Debug, Clone)]
struct Entity {
    entity_type: String,
    /// The keys mapped to it (the reverse of `ids`), so re-pointing costs the keys moved.
    keys: BTreeSet<Key>,
}

impl MemoryIdentity {
    pub fn new() -> MemoryIdentity {
        MemoryIdentity::default()
    }

    /// Every mapping, by ascending key.
    pub fn mappings(&self) -> impl Iterator<Item = (Key, &str)> + '_ {
        let mut all: Vec<(Key, &str)> = self.ids.iter().map(|m| (m.key(), m.id())).collect();
        all.sort();
        all.into_iter()
    }

    /// Every merge_log row, by ascending `(from, into)`.
    pub fn merge_log(&self) -> Vec<MergeLogRow> {
        self.winners
            .iter()
            .map(|(from, (into, ts))| MergeLogRow {
                from: from.clone(),
                into: into.clone(),
                timestamp: *ts,
            })
            .collect()
    }

    /// Whether `key` has a mapping (`get` without making the id's text).
    pub fn has_mapping(&self, key: &Key) -> bool {
        self.ids.contains(key as &dyn KeyParts)
    }

    /// Loads a stored mapping (no change is recorded).
    pub fn load_mapping(&mut self, key: Key, id: &str) {
        self.ids.replace(Mapping::new(&key, id));
        let entity_type = key.entity_type.clone();
        self.entity(id, &entity_type).keys.insert(key);
    }

    /// Loads a stored entity record, e.g. a merged-away entity without keys.
    pub fn load_entity(&mut self, id: &str, entity_type: &str) {
        self.entity(id, entity_type);
    }

    /// Loads a stored merge_log row.
    pub fn load_merge(&mut self, from: &str, into: &str, ts: Instant) {
        self.winners
            .insert(from.to_string(), (into.to_string(), ts));
        self.losers
            .entry(into.to_string())
            .or_default()
            .insert(from.to_string());
    }

    /// The changes since loading, in key order; the journal starts again empty. Sorted and
    /// looked up on all cores: after a pass from the start of a large ledger these are every
    /// key and entity, and a job waits for them.
    pub fn take_changes(&mut self) -> IdentityChanges {
        let mut keys = std::mem::take(&mut self.changed_keys);
        keys.par_sort_unstable();
        keys.dedup();
        let mut entities = std::mem::take(&mut self.new_entities);
        entities.par_sort_unstable();
        entities.dedup();
        let merges = std::mem::take(&mut self.new_merges);
        IdentityChanges {
            mappings: keys
                .into_par_iter()
                .filter_map(|k| {
                    let id = self.ids.get(&k as &dyn KeyParts)?.id().to_string();
                    Some((k, id))
                })
                .collect(),
            entities: entities
                .into_par_iter()
                .filter_map(|id| {
                    self.entities
                        .get(&id)
                        .map(|e| (id.clone(), e.entity_type.clone()))
                })
                .collect(),
            merges: merges
                .into_iter()
                .filter_map(|from| {
                    self.winners.get(&from).map(|(into, ts)| MergeLogRow {
                        from: from.clone(),
                        into: into.clone(),
                        timestamp: *ts,
                    })
                })
                .collect(),
        }
    }

    fn entity(&mut self, id: &str, entity_type: &str) -> &mut Entity {
        if !self.entities.contains_key(id) {
            let entity = Entity {
                entity_type: entity_type.to_string(),
                keys: BTreeSet::new(),
            };
            self.entities.insert(id.to_string(), entity);
        }
        self.entities.get_mut(id).expect("inserted above")
    }
}

/// A key seen as its three parts, so that the map of mappings can be searched with a `Key`
/// or with borrowed parts alike. Hashing and equality are those of the parts in order.
trait KeyParts {
    fn parts(&self) -> (&str, &str, &str);
}

impl KeyParts for Key {
    fn parts(&self) -> (&str, &str, &str) {
        (&self.entity_type, &self.field, &self.value)
    }
}

impl KeyParts for (&str, &str, &str) {
    fn parts(&self) -> (&str, &str, &str) {
        *self
    }
}

impl Hash for dyn KeyParts + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (entity_type, field, value) = self.parts();
        entity_type.hash(state);
        field.hash(state);
        value.hash(state);
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyParts + '_ {}

/// A mapping as the map of mappings holds it: the key's three parts and the entity id end to
/// end in one allocation, with where the field, the value and the id start. A lookup follows
/// one pointer to compare the key and finds the id beside it (a key and an id allocated apart
/// were two likely cache misses per lookup in a map of a million keys). Hashing and equality
/// are the key's only, so a set of mappings is a map from keys to ids.
#[derive(Debug, Clone)]
struct Mapping {
    text: Box<str>,
    field_at: u32,
    value_at: u32,
    id_at: u32,
}

impl Mapping {
    fn new(key: &Key, id: &str) -> Mapping {
        let offset = |n: usize| u32::try_from(n).expect("a key and an id are far below 4 GiB");
        let (field_at, value_at) = (
            key.entity_type.len(),
            key.entity_type.len() + key.field.len(),
        );
        Mapping {
            text: [
                key.entity_type.as_str(),
                key.field.as_str(),
                key.value.as_str(),
                id,
            ]
            .concat()
            .into_boxed_str(),
            field_at: offset(field_at),
            value_at: offset(value_at),
            id_at: offset(value_at + key.value.len()),
        }
    }

    fn key(&self) -> Key {
        let (entity_type, field, value) = self.parts();
        Key::new(entity_type, field, value)
    }

    fn id(&self) -> &str {
        &self.text[self.id_at as usize..]
    }
}

impl KeyParts for Mapping {
    fn parts(&self) -> (&str, &str, &str) {
        let (field_at, value_at, id_at) = (
            self.field_at as usize,
            self.value_at as usize,
            self.id_at as usize,
        );
        (
            &self.text[..field_at],
            &self.text[field_at..value_at],
            &self.text[value_at..id_at],
        )
    }
}

impl<'a> Borrow<dyn KeyParts + 'a> for Mapping {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

impl Hash for Mapping {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn KeyParts).hash(state);
    }
}

impl PartialEq for Mapping {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for Mapping {}

impl IdentityStore for MemoryIdentity {
    fn get(&self, key: &Key) -> Option<String> {
        self.ids
            .get(key as &dyn KeyParts)
            .map(|m| m.id().to_string())
    }

    fn get_parts(&self, entity_type: &str, field: &str, value: &str) -> Option<String> {
        let parts = (entity_type, field, value);
        self.ids
            .get(&parts as &dyn KeyParts)
            .map(|m| m.id().to_string())
    }

    fn insert_if_absent(&mut self, key: Key, id: &str) -> String {
        if let Some(stored) = self.ids.get(&key as &dyn KeyParts) {
            return stored.id().to_string();
        }
        self.ids.insert(Mapping::new(&key, id));
        if !self.entities.contains_key(id) {
            self.new_entities.push(id.to_string());
        }
        self.changed_keys.push(key.clone());
        let entity_type = key.entity_type.clone();
        self.entity(id, &entity_type).keys.insert(key);
        id.to_string()
    }

    fn keys_of(&self, id: &str) -> Vec<Key> {
        self.entities
            .get(id)
            .map(|e| e.keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn repoint(&mut self, from: &str, to: &str) -> usize {
        if from == to {
            return 0;
        }
        let Some(source) = self.entities.get_mut(from) else {
            return 0;
        };
        let mut moved = std::mem::take(&mut source.keys);
        let entity_type = source.entity_type.clone();
        for key in &moved {
            if self.ids.contains(key as &dyn KeyParts) {
                self.ids.replace(Mapping::new(key, to));
            }
            self.changed_keys.push(key.clone());
        }
        if !self.entities.contains_key(to) {
            self.new_entities.push(to.to_string());
        }
        let count = moved.len();
        let target = &mut self.entity(to, &entity_type).keys;
        if target.len() < moved.len() {
            std::mem::swap(target, &mut moved);
        }
        target.append(&mut moved);
        count
    }

    fn entity_type(&self, id: &str) -> Option<String> {
        self.entities.get(id).map(|e| e.entity_type.clone())
    }

    fn merged_into(&self, id: &str) -> Option<String> {
        self.winners.get(id).map(|(into, _)| into.clone())
    }

    fn merge_time(&self, id: &str) -> Option<Instant> {
        self.winners.get(id).map(|(_, ts)| *ts)
    }

    fn merged_from(&self, id: &str) -> Vec<String> {
        self.losers
            .get(id)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn record_merge(&mut self, from: &str, into: &str, ts: Instant) -> bool {
        if self.winners.contains_key(from) {
            return false;
        }
        self.winners
            .insert(from.to_string(), (into.to_string(), ts));
        self.new_merges.insert(from.to_string());
        self.losers
            .entry(into.to_string())
            .or_default()
            .insert(from.to_string());
        true
    }

    fn remove_entity(&mut self, id: &str) -> Vec<Key> {
        let keys: Vec<Key> = self
            .entities
            .remove(id)
            .map(|e| e.keys.into_iter().collect())
            .unwrap_or_default();
        for key in &keys {
            self.ids.remove(key as &dyn KeyParts);
        }
        if let Some((into, _)) = self.winners.remove(id) {
            if let Some(losers) = self.losers.get_mut(&into) {
                losers.remove(id);
                if losers.is_empty() {
                    self.losers.remove(&into);
                }
            }
        }
        for loser in self.losers.remove(id).unwrap_or_default() {
            self.winners.remove(&loser);
        }
        keys
    }
}

#[cfg(test)]
mod journal_tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn changes_since_loading_are_journaled() {
        let mut m = MemoryIdentity::new();
        let k1 = Key::new("c", "email", "a");
        let k2 = Key::new("c", "phone", "1");
        m.load_mapping(k1.clone(), "A");
        assert_eq!(m.take_changes(), IdentityChanges::default());
        m.insert_if_absent(k2.clone(), "P");
        m.repoint("P", "A");
        let ts = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        assert!(m.record_merge("P", "A", ts));
        let changes = m.take_changes();
        assert_eq!(changes.mappings, vec![(k2, "A".to_string())]);
        assert_eq!(changes.entities, vec![("P".to_string(), "c".to_string())]);
        assert_eq!(changes.merges.len(), 1);
        assert_eq!(m.take_changes(), IdentityChanges::default());
    }

    #[test]
    fn a_key_is_found_by_its_parts_exactly() {
        let mut m = MemoryIdentity::new();
        m.load_mapping(Key::new("c", "email", "a@x"), "A");
        m.load_mapping(Key::new("c", "emai", "la@x"), "B");
        assert_eq!(m.get_parts("c", "email", "a@x").as_deref(), Some("A"));
        assert_eq!(m.get_parts("c", "emai", "la@x").as_deref(), Some("B"));
        assert_eq!(m.get_parts("c", "email", "a@y"), None);
        assert_eq!(m.get_parts("d", "email", "a@x"), None);
        assert!(m.has_mapping(&Key::new("c", "emai", "la@x")));
        assert!(!m.has_mapping(&Key::new("c", "emai", "l@x")));
        // The same text end to end as ("c", "email", "a@x") → "A": the boundaries tell them apart.
        m.load_mapping(Key::new("c", "email", "a"), "@xA");
        assert_eq!(m.get_parts("c", "email", "a").as_deref(), Some("@xA"));
        assert_eq!(m.get_parts("c", "email", "a@x").as_deref(), Some("A"));
        assert_eq!(m.repoint("A", "Z"), 1);
        assert_eq!(m.get(&Key::new("c", "email", "a@x")).as_deref(), Some("Z"));
        assert_eq!(m.get_parts("c", "email", "a").as_deref(), Some("@xA"));
        assert_eq!(m.keys_of("Z"), vec![Key::new("c", "email", "a@x")]);
    }
}
