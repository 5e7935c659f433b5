//! Identity keys and what is computed from them alone: the derived id of a key and its
//! priority among the keys of its entity type (PIPELINE.md §5.1, §5.3), the salt fingerprint
//! (§5.3) and the shard of an id (§14).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::definitions::Definitions;
use crate::fasthash::FastIndexSet;

/// An identity key `(entity_type, field, value)` ([FIX P25]: the field is part of the key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub entity_type: String,
    pub field: String,
    pub value: String,
}

impl Key {
    pub fn new(
        entity_type: impl Into<String>,
        field: impl Into<String>,
        value: impl Into<String>,
    ) -> Key {
        Key {
            entity_type: entity_type.into(),
            field: field.into(),
            value: value.into(),
        }
    }
}

/// The UUID (version 8) derived from key `(entity_type, field, value)`, optionally salted:
/// `SHA-256([salt, 0x00,] "defacto:<type>:<field>:<value>")`, first 16 bytes, version and
/// variant bits set, lower-case 8-4-4-4-12 text.
pub fn derived_id(salt: Option<&str>, entity_type: &str, field: &str, value: &str) -> String {
    let mut hasher = Sha256::new();
    if let Some(salt) = salt {
        hasher.update(salt.as_bytes());
        hasher.update([0u8]);
    }
    for part in ["defacto:", entity_type, ":", field, ":", value] {
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0F) | 0x80;
    bytes[8] = (bytes[8] & 0x3F) | 0x80;
    let mut text = String::with_capacity(36);
    for (i, group) in [0..4, 4..6, 6..8, 8..10, 10..16].into_iter().enumerate() {
        if i > 0 {
            text.push('-');
        }
        crate::canonical::push_hex(&mut text, &bytes[group]);
    }
    text
}

/// The salt's fingerprint kept with the identity store and build states: the hex SHA-256 of
/// the salt text, or the empty string when no salt is configured (so adding, changing and
/// removing a salt all change it).
pub fn salt_fingerprint(salt: Option<&str>) -> String {
    match salt {
        Some(salt) => crate::canonical::sha256_hex(salt),
        None => String::new(),
    }
}

/// §14: the first four bytes of SHA-256 of the id, as an unsigned big-endian integer.
pub fn shard_hash(id: &str) -> u32 {
    let digest = Sha256::digest(id.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The shard owning entity `id`. `total_shards` must be positive (configuration validates it).
pub fn shard_of(id: &str, total_shards: u32) -> u32 {
    shard_hash(id) % total_shards
}

/// The priority of a key within its entity type (§5.3): the position of its field in the
/// identity declaration, then its derived id. The *smaller* rank is the *higher* priority.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank {
    pub position: usize,
    pub id: String,
}

/// The identity fields of every defined entity type, in declaration (= priority) order.
/// Types iterate by ascending name.
#[derive(Debug, Clone, Default)]
pub struct IdentityFields {
    types: BTreeMap<String, FastIndexSet<String>>,
}

impl IdentityFields {
    pub fn from_definitions(defs: &Definitions) -> IdentityFields {
        IdentityFields {
            types: defs
                .entities
                .iter()
                .map(|(name, entity)| (name.clone(), entity.identity.keys().cloned().collect()))
                .collect(),
        }
    }

    /// The fields of `entity_type` in declaration order, or `None` for an undefined type.
    pub fn of(&self, entity_type: &str) -> Option<&FastIndexSet<String>> {
        self.types.get(entity_type)
    }

    /// The declaration position of an identity field; `None` when the type is undefined or
    /// does not declare the field ([FIX P24]: such hints are ignored).
    pub fn position(&self, entity_type: &str, field: &str) -> Option<usize> {
        self.types.get(entity_type)?.get_index_of(field)
    }

    pub fn types(&self) -> impl Iterator<Item = (&String, &FastIndexSet<String>)> {
        self.types.iter()
    }
}

impl<T: Into<String>, F: Into<String>, I: IntoIterator<Item = F>> FromIterator<(T, I)>
    for IdentityFields
{
    fn from_iter<It: IntoIterator<Item = (T, I)>>(iter: It) -> Self {
        IdentityFields {
            types: iter
                .into_iter()
                .map(|(t, fields)| (t.into(), fields.into_iter().map(Into::into).collect()))
                .collect(),
        }
    }
}
