//! The jobs' one error type. Variants follow the error kinds of the spec (RESULTS.md §11);
//! each maps to an exit status (ARCHITECTURE.md: 1 the run failed, 2 bad usage or
//! configuration).

use defacto_core::definitions::DefinitionError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ConfigError: {0}")]
    Config(String),
    #[error("DefinitionError: {}", .0.message)]
    Definition(#[from] DefinitionError),
    #[error("NotFoundError: {0}")]
    NotFound(String),
    #[error("StorageError: {0}")]
    Storage(String),
    #[error("QueryError: {0}")]
    Query(String),
    #[error("BuildError: {0}")]
    Build(String),
    #[error("IdentityError: {0}")]
    Identity(String),
    #[error("IngestError: {0}")]
    Ingest(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => 2,
            _ => 1,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
