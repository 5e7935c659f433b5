//! Sequential identity resolution (PIPELINE.md §5.2), explicit merges and their replay
//! (§11.2, §11.3), erase's identity part (§12.1) and identity inspection (§5.4).

use std::collections::{BTreeMap, BTreeSet};

use super::key::{derived_id, IdentityFields, Key, Rank};
use super::store::IdentityStore;
use super::IdentityError;
use crate::fasthash::{FastIndexMap, FastMap};
use crate::normalize::Hints;
use crate::value::Instant;

/// The identity of one entity as `hints()` shows it: field → values (§5.4).
pub type ClusterHints = FastIndexMap<String, Vec<String>>;

/// Cluster hints per entity type, the shape of a system merge event's `from_hints` and
/// `into_hints` (`{T: {field: [values]}}`).
pub type TypedHints = BTreeMap<String, ClusterHints>;

/// One executed merge: `from` lost to `into`; `timestamp` is the merge_log timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    pub from: String,
    pub into: String,
    pub timestamp: Instant,
}

/// What resolving one event did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Entity type → the id the event is mapped to (its `event_entities` rows, §5.2 step 5).
    pub entities: BTreeMap<String, String>,
    /// The merges it executed, by entity type, then losers in priority order of their anchors.
    pub merges: Vec<Merge>,
}

/// The data of an explicit merge's system event that replays need (§11.2, §11.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemMerge {
    pub from_entity_id: String,
    pub into_entity_id: String,
    pub from_hints: TypedHints,
    pub into_hints: TypedHints,
    pub timestamp: Instant,
}

/// The result of an explicit merge: the system event to append and the merge_log row it
/// recorded (none when `from` is already merged away or unknown, §11.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeOutcome {
    pub event: SystemMerge,
    pub recorded: Option<Merge>,
}

/// What `erase` removed from identity (§12.1 steps 2, 3, 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    /// The cascade set: the erased id first, then the entities merged into its members.
    pub members: Vec<String>,
    /// The keys that were mapped to members; their values are the erased hint values.
    pub keys: Vec<Key>,
    /// The winner the erased id had been merged into (its members' events go there).
    pub merged_into: Option<String>,
}

/// Resolves events against an identity store, one at a time, in canonical order.
pub struct Resolver<S> {
    fields: IdentityFields,
    salt: Option<String>,
    store: S,
    /// Entity id → declaration position of its anchor's field. An anchor is the key whose
    /// derived id is the entity id, so this is a function of the id and never goes stale.
    anchors: FastMap<String, usize>,
}

/// An entity an event touches, or the new entity it would start, ranked for winning.
struct Contender {
    rank: Rank,
    id: String,
}

impl<S: IdentityStore> Resolver<S> {
    pub fn new(fields: IdentityFields, salt: Option<&str>, store: S) -> Resolver<S> {
        Resolver {
            fields,
            salt: salt.map(str::to_string),
            store,
            anchors: FastMap::default(),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    pub fn into_store(self) -> S {
        self.store
    }

    pub fn fields(&self) -> &IdentityFields {
        &self.fields
    }

    /// The derived id of a key under this resolver's salt.
    pub fn derived_id(&self, key: &Key) -> String {
        derived_id(
            self.salt.as_deref(),
            &key.entity_type,
            &key.field,
            &key.value,
        )
    }

    /// The priority of a key (§5.3); `None` when its field is not a declared identity field.
    pub fn rank(&self, key: &Key) -> Option<Rank> {
        let position = self.fields.position(&key.entity_type, &key.field)?;
        Some(Rank {
            position,
            id: self.derived_id(key),
        })
    }

    /// §5.2 for one event: its entity types in ascending name order.
    pub fn resolve(&mut self, hints: &Hints, timestamp: Instant) -> Resolution {
        let mut resolution = Resolution::default();
        for (entity_type, values) in hints {
            let id = match self.mapped_to_one(entity_type, values) {
                Some(Some(id)) => id,
                Some(None) => continue,
                None => {
                    let keys: Vec<(usize, Key)> = self
                        .identity_hints(entity_type, values)
                        .map(|(position, field, value)| {
                            (position, Key::new(entity_type.as_str(), field, value))
                        })
                        .collect();
                    self.resolve_keys(&keys, timestamp, &mut resolution.merges)
                }
            };
            resolution.entities.insert(entity_type.clone(), id);
        }
        resolution
    }

    /// The hints of `entity_type` that are declared identity fields ([FIX P24]: others are
    /// ignored), each with its field's position.
    fn identity_hints<'h>(
        &'h self,
        entity_type: &'h str,
        values: &'h FastIndexMap<String, String>,
    ) -> impl Iterator<Item = (usize, &'h str, &'h str)> + 'h {
        values.iter().filter_map(move |(field, value)| {
            let position = self.fields.position(entity_type, field)?;
            Some((position, field.as_str(), value.as_str()))
        })
    }

    /// Most events' case, looked up without making keys: `Some(Some(id))` when every
    /// identity hint of the type is mapped to the one entity `id`, `Some(None)` when the type
    /// has no identity hint (the event is not its), `None` otherwise (steps 1–5 decide).
    fn mapped_to_one(
        &self,
        entity_type: &str,
        values: &FastIndexMap<String, String>,
    ) -> Option<Option<String>> {
        let mut one: Option<String> = None;
        for (_, field, value) in self.identity_hints(entity_type, values) {
            let id = self.store.get_parts(entity_type, field, value)?;
            match &one {
                Some(seen) if *seen != id => return None,
                Some(_) => {}
                None => one = Some(id),
            }
        }
        Some(one)
    }

    /// Steps 1–5 for the keys of one type (each with its field position).
    fn resolve_keys(
        &mut self,
        keys: &[(usize, Key)],
        timestamp: Instant,
        merges: &mut Vec<Merge>,
    ) -> String {
        loop {
            let mut found: Vec<String> = Vec::new();
            let mut unknown: Vec<(Rank, &Key)> = Vec::new();
            for (position, key) in keys {
                match self.store.get(key) {
                    Some(id) if !found.contains(&id) => found.push(id),
                    Some(_) => {}
                    None => unknown.push((
                        Rank {
                            position: *position,
                            id: self.derived_id(key),
                        },
                        key,
                    )),
                }
            }
            let mut entities: Vec<Contender> =
                found.into_iter().map(|id| self.contender(id)).collect();
            entities.sort_by(|a, b| a.rank.cmp(&b.rank));
            let best_new = unknown.iter().min_by(|a, b| a.0.cmp(&b.0));
            let winner = match (entities.first(), best_new) {
                (Some(entity), Some((rank, _))) if entity.rank < *rank => entity.id.clone(),
                (Some(entity), None) => entity.id.clone(),
                (_, Some((rank, _))) => {
                    self.anchors.insert(rank.id.clone(), rank.position);
                    rank.id.clone()
                }
                (None, None) => unreachable!("resolve_keys is called with at least one key"),
            };
            let mut raced = false;
            for (_, key) in unknown {
                raced |= self.store.insert_if_absent(key.clone(), &winner) != winner;
            }
            if raced {
                // Another writer mapped one of the keys first: its mapping wins, start over.
                continue;
            }
            for loser in entities.iter().filter(|e| e.id != winner) {
                if let Some(merge) = self.execute_merge(&loser.id, &winner, timestamp) {
                    merges.push(merge);
                }
            }
            return winner;
        }
    }

    /// Ranks an existing entity by its anchor. An entity without an anchor among its keys
    /// (possible only after replaying a merge onto a stored id, §11.3) ranks by its best key.
    fn contender(&mut self, id: String) -> Contender {
        if let Some(&position) = self.anchors.get(&id) {
            return Contender {
                rank: Rank {
                    position,
                    id: id.clone(),
                },
                id,
            };
        }
        let mut best: Option<Rank> = None;
        for key in self.store.keys_of(&id) {
            let Some(rank) = self.rank(&key) else {
                continue;
            };
            if rank.id == id {
                self.anchors.insert(id.clone(), rank.position);
                return Contender { rank, id };
            }
            if best.as_ref().is_none_or(|b| rank < *b) {
                best = Some(rank);
            }
        }
        let rank = best.unwrap_or(Rank {
            position: usize::MAX,
            id: id.clone(),
        });
        Contender { rank, id }
    }

    /// §11.1 steps 1 and 3.
    fn execute_merge(&mut self, from: &str, into: &str, timestamp: Instant) -> Option<Merge> {
        self.store.repoint(from, into);
        self.store
            .record_merge(from, into, timestamp)
            .then(|| Merge {
                from: from.to_string(),
                into: into.to_string(),
                timestamp,
            })
    }

    /// The checks of an explicit merge (§11.2, checks 1–3 in order); returns the type of `into`.
    pub fn check_merge(&self, from: &str, into: &str) -> Result<String, IdentityError> {
        if from == into {
            return Err(IdentityError::SelfMerge {
                id: from.to_string(),
            });
        }
        let into_type = match self.store.entity_type(into) {
            Some(t) if self.store.merged_into(into).is_none() => t,
            _ => {
                return Err(IdentityError::SurvivorNotFound {
                    id: into.to_string(),
                })
            }
        };
        match self.store.entity_type(from) {
            Some(from_type) if from_type != into_type => Err(IdentityError::TypeMismatch {
                from_type,
                from: from.to_string(),
                into_type,
                into: into.to_string(),
            }),
            _ => Ok(into_type),
        }
    }

    /// Explicit merge (§11.2): after the checks, `from`'s keys move to `into`, which keeps its
    /// id and anchor, and merge_log records the pair unless `from` is merged away or unknown.
    pub fn merge(
        &mut self,
        from: &str,
        into: &str,
        timestamp: Instant,
    ) -> Result<MergeOutcome, IdentityError> {
        let entity_type = self.check_merge(from, into)?;
        let side = |hints: ClusterHints| TypedHints::from([(entity_type.clone(), hints)]);
        let event = SystemMerge {
            from_entity_id: from.to_string(),
            into_entity_id: into.to_string(),
            from_hints: side(self.hints(from)),
            into_hints: side(self.hints(into)),
            timestamp,
        };
        let recorded = match self.store.entity_type(from) {
            Some(_) => self.execute_merge(from, into, timestamp),
            None => None,
        };
        Ok(MergeOutcome { event, recorded })
    }

    /// §11.3: a system merge event met in a resolve pass from the start. Each side resolves
    /// to the entity of its first key (in priority order) that has a mapping, else to its
    /// stored id; different entities are merged with the `into` side surviving.
    pub fn replay_merge(&mut self, event: &SystemMerge) -> Option<Merge> {
        let from = self
            .resolve_stored(&event.from_hints)
            .unwrap_or_else(|| event.from_entity_id.clone());
        let into = self
            .resolve_stored(&event.into_hints)
            .unwrap_or_else(|| event.into_entity_id.clone());
        if from == into {
            return None;
        }
        self.execute_merge(&from, &into, event.timestamp)
    }

    fn resolve_stored(&self, hints: &TypedHints) -> Option<String> {
        let mut keys: Vec<(Rank, Key)> = Vec::new();
        for (entity_type, fields) in hints {
            for (field, values) in fields {
                for value in values {
                    let key = Key::new(entity_type.as_str(), field.as_str(), value.as_str());
                    if let Some(rank) = self.rank(&key) {
                        keys.push((rank, key));
                    }
                }
            }
        }
        keys.sort();
        keys.iter().find_map(|(_, key)| self.store.get(key))
    }

    /// §5.4: the keys of `id`, fields in declaration order, values by ascending derived id.
    pub fn hints(&self, id: &str) -> ClusterHints {
        let mut keys: Vec<(usize, &str, String, Key)> = Vec::new();
        let stored = self.store.keys_of(id);
        for key in &stored {
            let position = self
                .fields
                .position(&key.entity_type, &key.field)
                .unwrap_or(usize::MAX);
            keys.push((
                position,
                key.field.as_str(),
                self.derived_id(key),
                key.clone(),
            ));
        }
        keys.sort();
        let mut hints = ClusterHints::default();
        for (_, _, _, key) in keys {
            hints.entry(key.field).or_default().push(key.value);
        }
        hints
    }

    /// §5.4: the entity a hint value identifies, searching the smallest entity type name
    /// first and within it the smallest field name.
    pub fn lookup(&self, value: &str) -> Option<String> {
        self.fields.types().find_map(|(entity_type, fields)| {
            let mut names: Vec<&String> = fields.iter().collect();
            names.sort();
            names.into_iter().find_map(|field| {
                self.store
                    .get(&Key::new(entity_type.as_str(), field.as_str(), value))
            })
        })
    }

    /// Erase's identity part (§12.1): the cascade set of `id`, whose key mappings and
    /// merge_log rows are deleted.
    pub fn erase(&mut self, id: &str) -> Erasure {
        let mut members = vec![id.to_string()];
        let mut seen = BTreeSet::from([id.to_string()]);
        let mut next = 0;
        while next < members.len() {
            for loser in self.store.merged_from(&members[next]) {
                if seen.insert(loser.clone()) {
                    members.push(loser);
                }
            }
            next += 1;
        }
        let merged_into = self.store.merged_into(id);
        let keys = members
            .iter()
            .flat_map(|member| self.store.remove_entity(member))
            .collect();
        Erasure {
            members,
            keys,
            merged_into,
        }
    }
}
