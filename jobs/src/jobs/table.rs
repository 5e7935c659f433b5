//! `defacto table ENTITY [--history] [--as-of T] [--resolve-merges]`: the current state (or
//! the full history, or the state at an instant) of one entity type of the active version,
//! read from its Delta history table (PIPELINE.md §8.5). Read-only.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use defacto_core::value::{timestamp_text, Instant};

use crate::cli::Global;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::history_table::{entity_schema, sql_list};
use crate::jobs::build::parse_as_of;
use crate::lake::tables;
use crate::output::{self, RowFormat};

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
    /// Also every row of the entities merged (transitively) into the entities shown.
    #[arg(long)]
    pub resolve_merges: bool,
    #[arg(long, value_enum, default_value_t = RowFormat::Table)]
    pub format: RowFormat,
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
    let id = format!("\"{}_id\"", entity.name);
    let mut filter = match (args.history, &args.as_of) {
        (true, _) => "TRUE".to_string(),
        (false, Some(t)) => {
            let t = timestamp_text(t);
            format!("valid_from <= TIMESTAMP '{t}' AND (valid_to IS NULL OR valid_to > TIMESTAMP '{t}')")
        }
        (false, None) => "valid_to IS NULL".into(),
    };
    let table = tables::history(&row.version, &entity.name);
    let registered = [("h", table.as_str(), entity_schema(entity))];
    if args.resolve_merges && !args.history {
        let shown = ctx
            .lake
            .query_map(
                &registered,
                &format!("SELECT DISTINCT {id} FROM h WHERE {filter}"),
                |b| {
                    let ids = crate::ledger::Columns::new(b).str(&format!("{}_id", entity.name))?;
                    Ok((0..b.num_rows())
                        .map(|i| ids.value(i).to_string())
                        .collect())
                },
            )
            .await?;
        let merges = ctx
            .lake
            .query_map(
                &registered,
                &format!("SELECT {id}, merged_into FROM h WHERE merged_into IS NOT NULL"),
                |b| {
                    let c = crate::ledger::Columns::new(b);
                    let (from, into) = (
                        c.str(&format!("{}_id", entity.name))?,
                        c.str("merged_into")?,
                    );
                    Ok((0..b.num_rows())
                        .map(|i| (into.value(i).to_string(), from.value(i).to_string()))
                        .collect())
                },
            )
            .await?;
        let absorbed = absorbed_by(&shown, &merges);
        if !absorbed.is_empty() {
            let ids: Vec<&str> = absorbed.iter().map(String::as_str).collect();
            filter = format!("({filter}) OR {id} IN ({})", sql_list(&ids));
        }
    }
    let sql = format!("SELECT * FROM h WHERE {filter} ORDER BY {id}, valid_from");
    let batches = ctx.lake.query_all(&registered, &sql).await?;
    output::print(&output::render(&batches, args.format)?)?;
    Ok(0)
}

/// The entities merged into any of `shown`, transitively (PIPELINE.md §8.5), not already shown.
/// `merges` holds (winner, loser) pairs.
pub(crate) fn absorbed_by(shown: &[String], merges: &[(String, String)]) -> BTreeSet<String> {
    let mut losers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (into, from) in merges {
        losers.entry(into.as_str()).or_default().push(from.as_str());
    }
    let shown_set: BTreeSet<&str> = shown.iter().map(String::as_str).collect();
    let mut out = BTreeSet::new();
    let mut todo: Vec<&str> = shown.iter().map(String::as_str).collect();
    while let Some(winner) = todo.pop() {
        for loser in losers.get(winner).into_iter().flatten() {
            if !shown_set.contains(loser) && out.insert(loser.to_string()) {
                todo.push(loser);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::absorbed_by;

    #[test]
    fn merges_resolve_transitively_and_only_for_shown_winners() {
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        let merges = vec![pair("W", "L1"), pair("L1", "L2"), pair("X", "L3")];
        let got = absorbed_by(&["W".to_string()], &merges);
        assert_eq!(got.into_iter().collect::<Vec<_>>(), vec!["L1", "L2"]);
        assert!(absorbed_by(&["Y".to_string()], &merges).is_empty());
    }
}
