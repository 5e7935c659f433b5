//! defacto-jobs: the batch jobs and the command line. Everything that touches the outside
//! world (files, and in later stages the Delta lake and the catalog database) lives here; the
//! engine itself is `defacto-core`.

pub mod cli;
pub mod error;
pub mod jobs;
pub mod output;

pub use error::{Error, Result};
