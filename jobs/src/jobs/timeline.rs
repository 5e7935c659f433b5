//! `defacto timeline ENTITY_ID`: the entity's history rows as a timeline — the event behind each
//! row and the changes it made, in words (RESULTS.md §9). Read-only; shows what the builds wrote.

use clap::Args;
use defacto_core::timeline::{timeline, TimelineEvent};

use crate::cli::Global;
use crate::context::Context;
use crate::error::Result;
use crate::history_table::{entity_schema, read_entity_rows, sql_list};
use crate::jobs::inspect::{entity_events, entity_type_of};
use crate::lake::tables;
use crate::output;

#[derive(Debug, Args)]
pub struct TimelineArgs {
    /// The entity id.
    pub entity_id: String,
}

pub async fn run(global: &Global, args: &TimelineArgs) -> Result<i32> {
    let ctx = Context::open(global, "timeline", None).await?;
    let (version, defs) = ctx.active_definitions().await?;
    let entity_type = entity_type_of(&ctx, &args.entity_id).await?;
    let entity = entity_type.as_deref().and_then(|ty| defs.entities.get(ty));
    let result = match entity {
        None => timeline(&args.entity_id, None, &[]),
        Some(entity) => {
            let table = tables::history(&version.version, &entity.name);
            let sql = format!(
                "SELECT * FROM h WHERE \"{}_id\" = {}",
                entity.name,
                sql_list(&[&args.entity_id])
            );
            let mut rows = Vec::new();
            for batch in ctx
                .lake
                .query_all(&[("h", &table, entity_schema(entity))], &sql)
                .await?
            {
                rows.extend(read_entity_rows(entity, &batch)?);
            }
            let events: Vec<TimelineEvent> = entity_events(&ctx, &args.entity_id)
                .await?
                .into_iter()
                .map(|e| TimelineEvent {
                    timestamp: e.timestamp,
                    sequence: e.sequence,
                    event_type: e.event_type,
                    event_id: e.event_id,
                })
                .collect();
            timeline(&args.entity_id, Some((entity, &rows)), &events)
        }
    };
    output::write_result_file(global.result_file.as_deref(), &result)?;
    output::print(&output::to_json(&result))?;
    Ok(0)
}
