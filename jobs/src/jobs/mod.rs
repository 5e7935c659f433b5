//! One module per job, each with the same shape: its arguments, `run`, and its result type.

pub mod assert;
pub mod build;
pub mod definitions;
pub mod erase;
pub mod export;
pub mod ingest;
pub mod inspect;
pub mod maintain;
pub mod merge;
pub mod normalize;
pub mod query;
pub mod redact;
pub mod resolve;
pub mod status;
pub mod table;
pub mod tick;
pub mod timeline;
pub mod validate;
