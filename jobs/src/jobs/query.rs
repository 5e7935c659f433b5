//! `defacto query "SQL"`: read-only SQL (DataFusion) over the state tables of the active
//! version. Tables, as in the seed's `query()`: `{entity}_history` and `rel_{type}_history`
//! (every row), and `{entity}` / `rel_{type}` (current rows). A reference to an unknown table
//! or column is a QueryError naming it, reported before anything runs; statements other than
//! queries are refused.

use clap::Args;
use defacto_core::definitions::Definitions;
use deltalake::datafusion::execution::context::SQLOptions;
use deltalake::datafusion::prelude::SessionContext;
use futures::TryStreamExt;

use crate::cli::Global;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::history_table::{entity_schema, relationship_schema, relationship_types};
use crate::lake::{tables, Lake};
use crate::output::{self, RowFormat};

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// One SQL query (SELECT … / WITH …).
    pub sql: String,
    #[arg(long, value_enum, default_value_t = RowFormat::Table)]
    pub format: RowFormat,
}

/// A session with every state table of `version` registered under its query name, and the
/// names.
pub(crate) async fn state_session(
    lake: &Lake,
    defs: &Definitions,
    version: &str,
) -> Result<(SessionContext, Vec<String>)> {
    let session = lake.open_session().await?;
    let mut names = Vec::new();
    let mut bases = Vec::new();
    for e in defs.entities.values() {
        let name = format!("{}_history", e.name);
        lake.register(
            &session,
            &name,
            &tables::history(version, &e.name),
            &entity_schema(e),
            None,
        )
        .await?;
        bases.push(e.name.clone());
        names.push(name);
    }
    for rel in relationship_types(defs) {
        let name = format!("rel_{rel}_history");
        let schema = relationship_schema(defs, &rel);
        lake.register(
            &session,
            &name,
            &tables::relationship_history(version, &rel),
            &schema,
            None,
        )
        .await?;
        bases.push(format!("rel_{rel}"));
        names.push(name);
    }
    for base in bases {
        session
            .sql(&format!(
                "CREATE VIEW \"{base}\" AS SELECT * FROM \"{base}_history\" WHERE valid_to IS NULL"
            ))
            .await
            .map_err(|e| Error::Storage(format!("Preparing a query failed: {e}")))?;
        names.push(base);
    }
    names.sort();
    Ok((session, names))
}

/// A planning error as the user should read it: which table or column does not exist.
fn query_error(e: &dyn std::fmt::Display, tables: &[String]) -> Error {
    let text = e.to_string();
    if let Some(start) = text.find("table '") {
        let rest = &text[start + 7..];
        if let Some(end) = rest.find("' not found") {
            let name = rest[..end].rsplit('.').next().unwrap_or(&rest[..end]);
            return Error::Query(format!(
                "Unknown table '{name}'. Available tables: [{}]",
                tables.join(", ")
            ));
        }
    }
    if let Some(start) = text.find("No field named ") {
        let rest = &text[start + 15..];
        let name = rest
            .split(". Valid fields")
            .next()
            .unwrap_or(rest)
            .trim_end_matches('.');
        let valid = rest
            .find("Valid fields are ")
            .map(|i| format!(" Valid columns: {}", rest[i + 17..].trim_end_matches('.')))
            .unwrap_or_default();
        return Error::Query(format!("Unknown column {name}.{valid}"));
    }
    Error::Query(text)
}

pub async fn run(global: &Global, args: &QueryArgs) -> Result<i32> {
    let ctx = Context::open(global, "query", None).await?;
    let (row, defs) = ctx.active_definitions().await?;
    let (session, names) = state_session(&ctx.lake, &defs, &row.version).await?;
    let read_only = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = session
        .sql_with_options(&args.sql, read_only)
        .await
        .map_err(|e| query_error(&e, &names))?;
    let batches: Vec<_> = df
        .execute_stream()
        .await
        .map_err(|e| query_error(&e, &names))?
        .try_collect()
        .await
        .map_err(|e| Error::Query(e.to_string()))?;
    output::print(&output::render(&batches, args.format)?)?;
    Ok(0)
}
