//! `defacto definitions …`: definition versions and drafts (DEFINITIONS.md §8). The config
//! folder stays the source of truth for builds; these commands register other versions,
//! switch the active one among completed builds, and prepare new versions as drafts.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use defacto_core::definitions::draft::{diff, Draft, DraftOp};
use defacto_core::definitions::mode::predict;
use defacto_core::definitions::{validate_path, Definitions, NormalizedDocument};
use serde_json::{json, Map, Value as Json};

use crate::cli::Global;
use crate::context::Context;
use crate::error::{Error, Result};

#[derive(Debug, Args)]
pub struct DefinitionsArgs {
    #[command(subcommand)]
    pub command: DefinitionsCommand,
}

#[derive(Debug, Subcommand)]
pub enum DefinitionsCommand {
    /// Every registered version, in registration order.
    List,
    /// The stored document of a version.
    Show { version: String },
    /// Register the definitions of DIR as VERSION (validated by every layer; not activated).
    Register { version: String, dir: PathBuf },
    /// Make VERSION the active one; its build must be complete.
    Activate { version: String },
    /// Work on a draft: a mutable copy of a version.
    Draft(DraftArgs),
}

#[derive(Debug, Args)]
pub struct DraftArgs {
    /// The draft's name (the version it registers as).
    pub name: String,
    #[command(subcommand)]
    pub op: DraftCommand,
}

#[derive(Debug, Subcommand)]
pub enum DraftCommand {
    /// Start the draft from a version (default: the active one).
    Create {
        #[arg(long)]
        based_on: Option<String>,
    },
    /// Add a property: SPEC is its body as JSON, e.g. '{"type": "number", "default": 0}'.
    AddProperty {
        entity: String,
        property: String,
        spec: String,
    },
    RemoveProperty {
        entity: String,
        property: String,
    },
    /// Add a state; --on is its `when` mapping and --after its time rules, as JSON.
    AddState {
        entity: String,
        state: String,
        #[arg(long)]
        on: Option<String>,
        #[arg(long)]
        after: Option<String>,
    },
    RemoveState {
        entity: String,
        state: String,
    },
    AddTransition {
        entity: String,
        state: String,
        event: String,
        #[arg(long)]
        to: String,
    },
    /// Add a handler: EFFECTS is its effect list as JSON.
    AddHandler {
        entity: String,
        state: String,
        event: String,
        effects: String,
        #[arg(long)]
        guard: Option<String>,
    },
    /// Replace an entity's identity: FIELDS is `{field: {...}, ...}` as JSON, in priority order.
    UpdateIdentity {
        entity: String,
        fields: String,
    },
    /// The ValidationResult of the draft.
    Validate,
    /// Entity-level changes against the base version.
    Diff,
    /// The build mode the draft would cause, and why.
    Impact,
    /// Register the draft as a version named after it.
    Register,
}

pub async fn run(global: &Global, args: &DefinitionsArgs) -> Result<i32> {
    let ctx = Context::open(global, "definitions", None).await?;
    let value = match &args.command {
        DefinitionsCommand::List => Json::Array(
            ctx.catalog
                .versions()
                .await?
                .into_iter()
                .map(|v| json!({"version": v.version, "active": v.active, "created_at": v.created_at}))
                .collect(),
        ),
        DefinitionsCommand::Show { version } => stored(&ctx, version).await?,
        DefinitionsCommand::Register { version, dir } => {
            let defs = Definitions::load(dir)?;
            let warnings = validate_path(dir).result().warnings;
            register(&ctx, version, &defs, warnings).await?
        }
        DefinitionsCommand::Activate { version } => {
            ctx.catalog.activate(version).await?;
            json!({"version": version, "active": true})
        }
        DefinitionsCommand::Draft(d) => draft(&ctx, d).await?,
    };
    ctx.finish(&value).await?;
    Ok(0)
}

async fn stored(ctx: &Context, version: &str) -> Result<Json> {
    let row = ctx
        .catalog
        .version(version)
        .await?
        .ok_or_else(|| Error::NotFound(format!("Version '{version}' not found")))?;
    serde_json::from_str(&row.definitions)
        .map_err(|e| Error::Storage(format!("version '{version}': {e}")))
}

/// `register` (§8.2, §8.5): a new name only; the result predicts the mode against the active
/// version and lists the entity-level changes.
async fn register(
    ctx: &Context,
    version: &str,
    defs: &Definitions,
    warnings: Vec<String>,
) -> Result<Json> {
    if ctx.catalog.version(version).await?.is_some() {
        return Err(Error::Definition(
            defacto_core::definitions::DefinitionError {
                message: format!("Version '{version}' already exists"),
                errors: vec![format!("Version '{version}' already exists")],
            },
        ));
    }
    let doc = NormalizedDocument::of(defs);
    let active = ctx.catalog.active_version().await?;
    let (mode, _) = predict(active.as_ref().map(|a| &a.hashes), &doc.hashes());
    let changes = match &active {
        Some(a) => diff(
            &serde_json::from_str(&a.definitions).unwrap_or(Json::Null),
            doc.json(),
        ),
        None => json!({}),
    };
    ctx.catalog
        .register_version(version, &doc.json().to_string(), &doc.hashes())
        .await?;
    Ok(json!({"version": version, "changes": changes, "build_mode": mode, "warnings": warnings}))
}

fn parse_json(what: &str, text: &str) -> Result<Json> {
    serde_json::from_str(text).map_err(|e| Error::Config(format!("{what} is not valid JSON: {e}")))
}

async fn draft(ctx: &Context, args: &DraftArgs) -> Result<Json> {
    let name = &args.name;
    if let DraftCommand::Create { based_on } = &args.op {
        let base = match based_on {
            Some(v) => v.clone(),
            None => {
                ctx.catalog
                    .active_version()
                    .await?
                    .ok_or_else(|| Error::Config("No active definition version".into()))?
                    .version
            }
        };
        let doc = stored(ctx, &base).await?;
        ctx.catalog
            .put_draft(name, &base, &doc.to_string(), &doc.to_string())
            .await?;
        return Ok(json!({"draft": name, "based_on": base}));
    }
    let (base_name, base_text, doc_text) =
        ctx.catalog.draft(name).await?.ok_or_else(|| {
            Error::NotFound(format!("Draft '{name}' not found (create it first)"))
        })?;
    let mut draft = Draft {
        base: parse_json("the draft's base", &base_text)?,
        document: parse_json("the draft", &doc_text)?,
    };
    let op = match &args.op {
        DraftCommand::AddProperty {
            entity,
            property,
            spec,
        } => Some(DraftOp::AddProperty {
            entity: entity.clone(),
            name: property.clone(),
            spec: parse_json("SPEC", spec)?,
        }),
        DraftCommand::RemoveProperty { entity, property } => Some(DraftOp::RemoveProperty {
            entity: entity.clone(),
            name: property.clone(),
        }),
        DraftCommand::AddState {
            entity,
            state,
            on,
            after,
        } => Some(DraftOp::AddState {
            entity: entity.clone(),
            name: state.clone(),
            on: on.as_deref().map(|t| parse_json("--on", t)).transpose()?,
            after: after
                .as_deref()
                .map(|t| parse_json("--after", t))
                .transpose()?,
        }),
        DraftCommand::RemoveState { entity, state } => Some(DraftOp::RemoveState {
            entity: entity.clone(),
            name: state.clone(),
        }),
        DraftCommand::AddTransition {
            entity,
            state,
            event,
            to,
        } => Some(DraftOp::AddTransition {
            entity: entity.clone(),
            state: state.clone(),
            event: event.clone(),
            to: to.clone(),
        }),
        DraftCommand::AddHandler {
            entity,
            state,
            event,
            effects,
            guard,
        } => Some(DraftOp::AddHandler {
            entity: entity.clone(),
            state: state.clone(),
            event: event.clone(),
            effects: parse_json("EFFECTS", effects)?,
            guard: guard.clone(),
        }),
        DraftCommand::UpdateIdentity { entity, fields } => {
            let fields: Map<String, Json> = match parse_json("FIELDS", fields)? {
                Json::Object(m) => m,
                _ => return Err(Error::Config("FIELDS must be a JSON object".into())),
            };
            Some(DraftOp::UpdateIdentity {
                entity: entity.clone(),
                fields,
            })
        }
        _ => None,
    };
    if let Some(op) = op {
        draft.apply(&op)?;
        ctx.catalog
            .put_draft(name, &base_name, &base_text, &draft.document.to_string())
            .await?;
        return Ok(json!({"draft": name, "diff": draft.diff()}));
    }
    match &args.op {
        DraftCommand::Validate => {
            let raw = defacto_core::definitions::raw_from_document(&draft.document)
                .map_err(|d| Error::Config(d.to_string()))?;
            Ok(
                serde_json::to_value(defacto_core::definitions::validate(&raw).result())
                    .expect("serializes"),
            )
        }
        DraftCommand::Diff => Ok(draft.diff()),
        DraftCommand::Impact => {
            let active = ctx.catalog.active_version().await?;
            let (mode, reason) = draft.impact(active.as_ref().map(|a| &a.hashes))?;
            Ok(json!({"build_mode": mode, "reason": reason}))
        }
        DraftCommand::Register => {
            let defs = draft.definitions()?;
            register(ctx, name, &defs, Vec::new()).await
        }
        _ => unreachable!("edit operations are handled above"),
    }
}
