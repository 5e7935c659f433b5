//! Identity in a job's memory: all of it, or only the part a job's events reach.
//!
//! A first resolve pass, a FULL build and `tick` need every mapping; an incremental resolve
//! pass needs only the keys its new events carry, and an incremental build only the entities
//! its new rows, merges and due time rules reach. Loading all of identity for those costs
//! time in proportion to the store (about half a second per 100 000 entities on SQLite), not
//! to the increment. `ScopedIdentity` holds a loaded part — the scope — and is loaded further
//! by keys and entities. Every entity is loaded with its whole cluster (the closure of
//! merge_log in both directions), its keys and its type, so merge chains and clusters never
//! leave the scope.
//!
//! Lookups outside the scope still answer from what is loaded, but are recorded as misses:
//! a job that finds misses after a pass loads them and runs the pass again (or, where a pass
//! cannot be repeated, loads everything), so a part that turns out too small costs a rerun,
//! never a wrong answer.

use std::collections::BTreeSet;
use std::sync::Mutex;

use defacto_core::fasthash::FastSet;
use defacto_core::identity::{IdentityChanges, IdentityStore, Key, MemoryIdentity};
use defacto_core::value::Instant;

use crate::catalog::Catalog;
use crate::error::Result;

/// Identity loaded whole or in part (see the module documentation).
#[derive(Debug)]
pub struct ScopedIdentity {
    store: MemoryIdentity,
    /// `None` when everything is loaded.
    scope: Option<Scope>,
}

#[derive(Debug, Default)]
struct Scope {
    /// Keys looked up: loaded with their mapping, or known to have none. (Every lookup of a
    /// pass checks these sets: hashed with the engine's fast hasher, as its own maps are.)
    keys: FastSet<Key>,
    /// Entities loaded with their keys, type and merges (or known to be new).
    ids: FastSet<String>,
    missed_keys: Mutex<BTreeSet<Key>>,
    missed_ids: Mutex<BTreeSet<String>>,
}

/// What a pass looked up outside the scope.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Misses {
    pub keys: Vec<Key>,
    pub ids: Vec<String>,
}

impl Misses {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.ids.is_empty()
    }
}

impl ScopedIdentity {
    /// All of identity.
    pub async fn whole(catalog: &Catalog) -> Result<ScopedIdentity> {
        Ok(ScopedIdentity {
            store: catalog.load_identity().await?,
            scope: None,
        })
    }

    /// Nothing loaded yet.
    pub fn empty() -> ScopedIdentity {
        ScopedIdentity {
            store: MemoryIdentity::new(),
            scope: Some(Scope::default()),
        }
    }

    /// Whether everything is loaded.
    pub fn is_whole(&self) -> bool {
        self.scope.is_none()
    }

    /// Loads the mappings of `keys` and the entities `ids`, each entity with its cluster,
    /// keys and type; what is loaded already stays as it is (it may have changed since).
    pub async fn extend(
        &mut self,
        catalog: &Catalog,
        keys: impl IntoIterator<Item = Key>,
        ids: impl IntoIterator<Item = String>,
    ) -> Result<()> {
        let Some(scope) = self.scope.as_mut() else {
            return Ok(());
        };
        let fresh: FastSet<Key> = keys
            .into_iter()
            .filter(|k| !scope.keys.contains(k))
            .collect();
        let mut frontier: BTreeSet<String> = ids
            .into_iter()
            .filter(|id| !scope.ids.contains(id))
            .collect();
        let started = std::time::Instant::now();
        let mut mappings = catalog
            .mappings_of(&fresh.iter().collect::<Vec<_>>())
            .await?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            keys = fresh.len(),
            "identity: mappings of keys"
        );
        frontier.extend(
            mappings
                .iter()
                .map(|(_, id)| id.clone())
                .filter(|id| !scope.ids.contains(id)),
        );
        let mut merges = Vec::new();
        let mut reached: BTreeSet<String> = BTreeSet::new();
        while !frontier.is_empty() {
            let ids: Vec<&str> = frontier.iter().map(String::as_str).collect();
            let found = catalog.merges_naming(&ids).await?;
            reached.extend(std::mem::take(&mut frontier));
            for m in &found {
                for id in [&m.from, &m.into] {
                    if !scope.ids.contains(id) && !reached.contains(id) {
                        frontier.insert(id.clone());
                    }
                }
            }
            merges.extend(found);
        }
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "identity: clusters"
        );
        let ids: Vec<&str> = reached.iter().map(String::as_str).collect();
        mappings.extend(catalog.mappings_to(&ids).await?);
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "identity: keys of entities"
        );
        // An entity's type is its keys' type (resolution maps a key only to an entity of the
        // key's type, and merges only join entities of one type): only the entities without
        // a key (merged away, their keys moved to the winner) are looked up for theirs.
        let mut keyless: BTreeSet<&str> = ids.iter().copied().collect();
        for (key, id) in &mappings {
            if keyless.remove(id.as_str()) {
                self.store.load_entity(id, &key.entity_type);
            }
        }
        let keyless: Vec<&str> = keyless.into_iter().collect();
        for (id, ty) in catalog.entity_types(&keyless).await? {
            self.store.load_entity(&id, &ty);
        }
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            keyless = keyless.len(),
            "identity: types"
        );
        for (key, id) in mappings {
            // A key in the scope before may have been re-pointed in memory since: memory
            // wins. (A key both looked up and reached through its entity comes twice: the
            // second finds it in the scope.)
            if scope.keys.contains(&key) {
                continue;
            }
            if !self.store.has_mapping(&key) {
                self.store.load_mapping(key.clone(), &id);
            }
            scope.keys.insert(key);
        }
        scope.keys.extend(fresh);
        for m in merges {
            if self.store.merged_into(&m.from).is_none() {
                self.store.load_merge(&m.from, &m.into, m.timestamp);
            }
        }
        scope.ids.extend(reached);
        Ok(())
    }

    /// The lookups made outside the scope since the last call.
    pub fn take_misses(&mut self) -> Misses {
        let Some(scope) = self.scope.as_mut() else {
            return Misses::default();
        };
        Misses {
            keys: take(&mut scope.missed_keys),
            ids: take(&mut scope.missed_ids),
        }
    }

    /// The changes since loading, for writing back (`MemoryIdentity::take_changes`).
    pub fn take_changes(&mut self) -> IdentityChanges {
        self.store.take_changes()
    }

    fn check_key(&self, key: &Key) {
        if let Some(scope) = &self.scope {
            if !scope.keys.contains(key) {
                lock(&scope.missed_keys).insert(key.clone());
            }
        }
    }

    fn check_id(&self, id: &str) {
        if let Some(scope) = &self.scope {
            if !scope.ids.contains(id) {
                lock(&scope.missed_ids).insert(id.to_string());
            }
        }
    }

    /// Records keys and entities made in memory as in the scope.
    fn made(&mut self, key: Option<&Key>, ids: &[&str]) {
        if let Some(scope) = self.scope.as_mut() {
            if let Some(key) = key {
                scope.keys.insert(key.clone());
            }
            for id in ids {
                if !scope.ids.contains(*id) {
                    scope.ids.insert(id.to_string());
                }
            }
        }
    }
}

/// The set a mutex holds, emptied, in ascending order.
fn take<T: Ord>(m: &mut Mutex<BTreeSet<T>>) -> Vec<T> {
    std::mem::take(m.get_mut().unwrap_or_else(|e| e.into_inner()))
        .into_iter()
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl IdentityStore for ScopedIdentity {
    fn get(&self, key: &Key) -> Option<String> {
        self.check_key(key);
        self.store.get(key)
    }

    fn get_parts(&self, entity_type: &str, field: &str, value: &str) -> Option<String> {
        match self.scope {
            // Every key is in memory: looked up by its parts, no key made.
            None => self.store.get_parts(entity_type, field, value),
            Some(_) => self.get(&Key::new(entity_type, field, value)),
        }
    }

    fn insert_if_absent(&mut self, key: Key, id: &str) -> String {
        self.check_key(&key);
        let mapped = self.store.insert_if_absent(key.clone(), id);
        self.made(Some(&key), &[&mapped]);
        mapped
    }

    fn keys_of(&self, id: &str) -> Vec<Key> {
        self.check_id(id);
        self.store.keys_of(id)
    }

    fn repoint(&mut self, from: &str, to: &str) -> usize {
        self.check_id(from);
        self.made(None, &[to]);
        self.store.repoint(from, to)
    }

    fn entity_type(&self, id: &str) -> Option<String> {
        self.check_id(id);
        self.store.entity_type(id)
    }

    fn merged_into(&self, id: &str) -> Option<String> {
        self.check_id(id);
        self.store.merged_into(id)
    }

    fn merged_from(&self, id: &str) -> Vec<String> {
        self.check_id(id);
        self.store.merged_from(id)
    }

    fn merge_time(&self, id: &str) -> Option<Instant> {
        self.check_id(id);
        self.store.merge_time(id)
    }

    fn record_merge(&mut self, from: &str, into: &str, ts: Instant) -> bool {
        self.check_id(from);
        self.check_id(into);
        self.store.record_merge(from, into, ts)
    }

    fn remove_entity(&mut self, id: &str) -> Vec<Key> {
        self.check_id(id);
        self.store.remove_entity(id)
    }
}
