//! Identity resolution (PIPELINE.md §5, §11): which entity each event belongs to, and the
//! merges of entities found to be the same. Pure: the identity itself lives behind
//! `IdentityStore`, which `defacto-jobs` implements over its database.

mod key;
mod resolve;
mod store;

pub use key::{derived_id, salt_fingerprint, shard_hash, shard_of, IdentityFields, Key, Rank};
pub use resolve::{
    ClusterHints, Erasure, Merge, MergeOutcome, Resolution, Resolver, SystemMerge, TypedHints,
};
pub use store::{IdentityChanges, IdentityStore, MemoryIdentity, MergeLogRow};

/// A refused explicit merge (PIPELINE.md §11.2); `class()` names the error of RESULTS.md §11.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("Cannot merge entity '{id}' into itself")]
    SelfMerge { id: String },
    #[error("Cannot merge {from_type} '{from}' into {into_type} '{into}'")]
    TypeMismatch {
        from_type: String,
        from: String,
        into_type: String,
        into: String,
    },
    #[error("Surviving entity '{id}' not found")]
    SurvivorNotFound { id: String },
}

impl IdentityError {
    /// `IdentityError` or `NotFoundError`.
    pub fn class(&self) -> &'static str {
        match self {
            IdentityError::SelfMerge { .. } | IdentityError::TypeMismatch { .. } => "IdentityError",
            IdentityError::SurvivorNotFound { .. } => "NotFoundError",
        }
    }
}
