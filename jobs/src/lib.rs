//! defacto-jobs: the batch jobs and the command line. Everything that touches the outside
//! world — the Delta lake (local or S3), the catalog database (SQLite or Postgres), input
//! files — lives here; the engine itself is `defacto-core`.

pub mod api;
pub mod catalog;
pub mod cli;
pub mod context;
pub mod error;
pub mod history_table;
pub mod identity;
pub mod jobs;
pub mod lake;
pub mod ledger;
pub mod output;
pub mod parquet_input;
pub mod parquet_output;
pub mod table_writer;
pub mod warehouse;

pub use error::{Error, Result};
