//! defacto-core: the pure engine. Definitions, the expression language, normalization,
//! identity resolution, interpretation, time rules and SCD2 history, with no I/O beyond
//! reading YAML/JSON text handed to it. `defacto-jobs` does all storage and networking.

pub mod assertion;
pub mod build;
pub mod canonical;
pub mod dedup;
pub mod definitions;
pub mod engine;
pub mod expr;
pub mod fasthash;
pub mod history;
pub mod identity;
pub mod interpret;
pub mod normalize;
pub mod privacy;
pub mod replay;
pub mod results;
pub mod timeline;
pub mod value;

pub use value::{Instant, Kind, Value};
