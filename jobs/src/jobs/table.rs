//! `defacto table ENTITY [--history] [--as-of T]`: the current state (or the full history, or
//! the state at an instant) of one entity type of the active version, read from its Delta
//! history table. Read-only.

use clap::{Args, ValueEnum};
use defacto_core::value::{timestamp_text, Instant};
use deltalake::arrow::util::pretty::pretty_format_batches;

use crate::cli::Global;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::history_table::entity_schema;
use crate::jobs::build::parse_as_of;
use crate::lake::tables;
use crate::output;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum TableFormat {
    #[default]
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub struct TableArgs {
    /// The entity type.
    pub entity: String,
    /// Every row (SCD2 history) instead of the current state.
    #[arg(long)]
    pub history: bool,
    /// The state at this instant (RFC 3339).
    #[arg(long, value_parser = parse_as_of, conflicts_with = "history")]
    pub as_of: Option<Instant>,
    #[arg(long, value_enum, default_value_t = TableFormat::Table)]
    pub format: TableFormat,
}

pub async fn run(global: &Global, args: &TableArgs) -> Result<i32> {
    let ctx = Context::open(global, "table", None).await?;
    let (row, defs) = ctx.active_definitions().await?;
    let entity = defs.entities.get(&args.entity).ok_or_else(|| {
        Error::NotFound(format!(
            "Unknown entity type '{}'. Available entity types: [{}]",
            args.entity,
            defs.entities.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let filter = match (args.history, &args.as_of) {
        (true, _) => String::new(),
        (false, Some(t)) => {
            let t = timestamp_text(t);
            format!(" WHERE valid_from <= TIMESTAMP '{t}' AND (valid_to IS NULL OR valid_to > TIMESTAMP '{t}')")
        }
        (false, None) => " WHERE valid_to IS NULL".into(),
    };
    let sql = format!(
        "SELECT * FROM h{filter} ORDER BY \"{0}_id\", valid_from",
        entity.name
    );
    let table = tables::history(&row.version, &entity.name);
    let batches = ctx
        .lake
        .query_all(&[("h", &table, entity_schema(entity))], &sql)
        .await?;
    let text = match args.format {
        TableFormat::Table => {
            pretty_format_batches(&batches)
                .map_err(|e| Error::Query(e.to_string()))?
                .to_string()
                + "\n"
        }
        TableFormat::Csv => {
            let mut buf = Vec::new();
            {
                let mut w = deltalake::arrow::csv::Writer::new(&mut buf);
                for b in &batches {
                    w.write(b).map_err(|e| Error::Query(e.to_string()))?;
                }
            }
            String::from_utf8_lossy(&buf).into_owned()
        }
        TableFormat::Json => {
            let rows = output::json_rows(&batches)?;
            serde_json::to_string(&rows).expect("rows serialize") + "\n"
        }
    };
    output::print(&text)?;
    Ok(0)
}
