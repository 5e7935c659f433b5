//! `defacto assert ENTITY_ID [state=NAME] [KEY=VALUE …]`: checks an entity's current row in the
//! active version (RESULTS.md §10). Prints nothing and exits 0 when every check passes; prints the
//! first failing check and a diff of the keys given and exits 1 otherwise. Processes nothing, so
//! a DAG can run it as a data check after `build`.

use clap::Args;
use defacto_core::assertion::{check, Column, Expectation, Found};
use deltalake::arrow::datatypes::DataType;

use crate::cli::Global;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::history_table::{entity_schema, sql_list};
use crate::jobs::inspect::entity_type_of;
use crate::lake::tables;
use crate::output;

#[derive(Debug, Args)]
pub struct AssertArgs {
    /// The entity id.
    pub entity_id: String,
    /// `state=NAME` and `KEY=VALUE` checks; VALUE is a JSON scalar (49, "49", true, null) or
    /// else a plain string.
    pub checks: Vec<String>,
}

pub async fn run(global: &Global, args: &AssertArgs) -> Result<i32> {
    let expectations = args
        .checks
        .iter()
        .map(|arg| Expectation::parse(arg))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(Error::Config)?;
    let ctx = Context::open(global, "assert", None).await?;
    let (version, defs) = ctx.active_definitions().await?;
    let id = sql_list(&[&args.entity_id]);
    let entity_type = entity_type_of(&ctx, &args.entity_id).await?;
    let entity = entity_type.as_deref().and_then(|ty| defs.entities.get(ty));
    let verdict = match entity {
        None => check(&args.entity_id, None, &expectations),
        Some(entity) => {
            let schema = entity_schema(entity);
            let table = tables::history(&version.version, &entity.name);
            let source = [("h", table.as_str(), schema.clone())];
            let current = format!(
                "SELECT * FROM h WHERE valid_to IS NULL AND \"{}_id\" = {id}",
                entity.name
            );
            let rows = output::json_rows(&ctx.lake.query_all(&source, &current).await?)?;
            let type_has_rows = !rows.is_empty()
                || ctx
                    .lake
                    .query_all(
                        &source,
                        "SELECT 1 AS one FROM h WHERE valid_to IS NULL LIMIT 1",
                    )
                    .await?
                    .iter()
                    .any(|b| b.num_rows() > 0);
            let columns: Vec<Column> = schema
                .fields()
                .iter()
                .map(|f| Column {
                    name: f.name().clone(),
                    datetime: matches!(f.data_type(), DataType::Timestamp(..) | DataType::Date32),
                })
                .collect();
            let state_column = format!("{}_state", entity.name);
            let found = Found {
                entity_type: &entity.name,
                type_has_rows,
                row: rows.first(),
                columns: &columns,
                state_column: &state_column,
            };
            check(&args.entity_id, Some(&found), &expectations)
        }
    };
    match verdict {
        Ok(()) => Ok(0),
        Err(failure) => {
            output::print(&format!("{failure}\n"))?;
            Ok(1)
        }
    }
}
