//! The command line (ARCHITECTURE.md "Command line"): global options, each also read from a
//! `DEFACTO_*` environment variable, and one subcommand per job. `main_with_args` maps errors
//! to exit statuses and prints one clear line per error.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::Error;
use crate::jobs::assert::AssertArgs;
use crate::jobs::build::BuildArgs;
use crate::jobs::definitions::DefinitionsArgs;
use crate::jobs::erase::EraseArgs;
use crate::jobs::export::ExportArgs;
use crate::jobs::ingest::IngestArgs;
use crate::jobs::inspect::{IdentityArgs, LedgerArgs};
use crate::jobs::maintain::MaintainArgs;
use crate::jobs::merge::MergeArgs;
use crate::jobs::normalize::NormalizeArgs;
use crate::jobs::query::QueryArgs;
use crate::jobs::redact::RedactArgs;
use crate::jobs::resolve::ResolveArgs;
use crate::jobs::status::StatusArgs;
use crate::jobs::table::TableArgs;
use crate::jobs::tick::TickArgs;
use crate::jobs::timeline::TimelineArgs;
use crate::jobs::validate::{self, ValidateArgs};
use crate::jobs::{
    assert, build, definitions, erase, export, ingest, inspect, maintain, merge, normalize, query,
    redact, resolve, status, table, tick, timeline,
};

#[derive(Debug, Parser)]
#[command(
    name = "defacto",
    version,
    about = "Turns raw operational events into temporal, queryable entity state."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// The definitions folder (entities/, sources/, schemas/), or one definitions document.
    #[arg(long, env = "DEFACTO_CONFIG", default_value = ".", global = true)]
    pub config: PathBuf,
    /// Lake root: a local path or URL (file://, s3://). Default: <config>/.defacto/lake.
    #[arg(long, env = "DEFACTO_LAKE", global = true)]
    pub lake: Option<String>,
    /// Catalog database URL (sqlite://… or postgres://…). Default: sqlite://<config>/.defacto/defacto.db.
    #[arg(long, env = "DEFACTO_DATABASE", global = true)]
    pub database: Option<String>,
    /// Namespace: the Postgres schema prefix.
    #[arg(
        long,
        env = "DEFACTO_NAMESPACE",
        default_value = "defacto",
        global = true
    )]
    pub namespace: String,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, env = "DEFACTO_LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "DEFACTO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Console, global = true)]
    pub log_format: LogFormat,
    /// Where failed records and events go: `delta` (the table ledger/dead_letters) or
    /// `file:PATH` (JSON lines appended to PATH).
    #[arg(
        long,
        env = "DEFACTO_DEAD_LETTER",
        default_value = "delta",
        global = true
    )]
    pub dead_letter: String,
    /// Also write the run's result JSON to this file (Airflow: /airflow/xcom/return.json).
    #[arg(long, env = "DEFACTO_RESULT_FILE", global = true)]
    pub result_file: Option<PathBuf>,
}

impl Global {
    /// The definitions path; a path that does not exist is a configuration error.
    pub fn config_path(&self) -> Result<&std::path::Path, Error> {
        if self.config.exists() {
            Ok(&self.config)
        } else {
            Err(Error::Config(format!(
                "the definitions folder '{}' does not exist (set --config or DEFACTO_CONFIG)",
                self.config.display()
            )))
        }
    }
}

/// `--shard-id I --total-shards N`: a build or tick of the entities whose id hashes to shard I
/// (PIPELINE.md §14). Both or neither; I below N.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct ShardArgs {
    #[arg(long, requires = "total_shards")]
    pub shard_id: Option<u32>,
    #[arg(long, requires = "shard_id")]
    pub total_shards: Option<u32>,
}

impl ShardArgs {
    /// `Some((shard_id, total_shards))` when sharded; a ConfigError when out of range.
    pub fn shard(&self) -> Result<Option<(u32, u32)>, Error> {
        match (self.shard_id, self.total_shards) {
            (Some(i), Some(n)) if n == 0 || i >= n => Err(Error::Config(format!(
                "--shard-id {i} must be below --total-shards {n}"
            ))),
            (Some(i), Some(n)) => Ok(Some((i, n))),
            _ => Ok(None),
        }
    }
}

/// The exit status of a run with `failed` failures under `--max-failures` (ARCHITECTURE.md:
/// 3 when more events failed than allowed).
pub fn exit_status(failed: u64, max_failures: Option<u64>) -> i32 {
    match max_failures {
        Some(max) if failed > max => 3,
        _ => 0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Console,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the definitions: every error and warning, with file and path.
    Validate(ValidateArgs),
    /// Append records to the raw ledger (one commit, one range of sequences).
    Ingest(IngestArgs),
    /// Normalize the raw records above the cursor into ledger/events.
    Normalize(NormalizeArgs),
    /// Resolve identity for new events (run once before sharded builds).
    Resolve(ResolveArgs),
    /// Build SCD2 history (mode detected: SKIP, INCREMENTAL, FULL, FULL_RENORMALIZE, FULL_WITH_IDENTITY_RESET).
    Build(BuildArgs),
    /// Evaluate time rules of every live entity up to --as-of.
    Tick(TickArgs),
    /// Erase an entity (and the entities merged into it) everywhere, physically.
    Erase(EraseArgs),
    /// Redact an entity's sensitive values in its ledger rows and rebuild its history.
    Redact(RedactArgs),
    /// Export history to the warehouse (catalog database), Parquet, CSV, Delta or graph JSON.
    Export(ExportArgs),
    /// Run a read-only SQL query over the state tables of the active version.
    Query(QueryArgs),
    /// Show the build status of the version `build` would build.
    Status(StatusArgs),
    /// Print an entity type's current state, history, or state as of an instant.
    Table(TableArgs),
    /// Inspect identity: lookup HINT_VALUE, hints ENTITY_ID, list.
    Identity(IdentityArgs),
    /// Inspect the ledger: count, events ENTITY_ID.
    Ledger(LedgerArgs),
    /// Compact small files, checkpoint and vacuum the lake's tables.
    Maintain(MaintainArgs),
    /// Definition versions and drafts: list, show, register, activate, draft.
    Definitions(DefinitionsArgs),
    /// Merge entity FROM into INTO (explicit merge).
    Merge(MergeArgs),
    /// Check an entity's current row: ENTITY_ID [state=NAME] [KEY=VALUE ...]; exit 1 on mismatch.
    Assert(AssertArgs),
    /// An entity's history as a timeline: the event behind each row and what it changed.
    Timeline(TimelineArgs),
}

/// Parses arguments, runs the command and returns the process exit status.
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Runs a parsed command: `validate` without a runtime, every other job on a multi-threaded
/// runtime whose future is polled on the calling thread (so `output::capture` in the
/// in-process API sees the job's output).
pub fn run(cli: &Cli) -> Result<i32, Error> {
    init_logging(&cli.global);
    if let Command::Validate(args) = &cli.command {
        return validate::run(&cli.global, args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let g = &cli.global;
    let outcome = runtime.block_on(async {
        match &cli.command {
            Command::Validate(_) => unreachable!("handled above"),
            Command::Ingest(args) => ingest::run(g, args).await,
            Command::Normalize(args) => normalize::run(g, args).await,
            Command::Resolve(args) => resolve::run(g, args).await,
            Command::Build(args) => build::run(g, args).await,
            Command::Tick(args) => tick::run(g, args).await,
            Command::Status(args) => status::run(g, args).await,
            Command::Table(args) => table::run(g, args).await,
            Command::Export(args) => export::run(g, args).await,
            Command::Erase(args) => erase::run(g, args).await,
            Command::Redact(args) => redact::run(g, args).await,
            Command::Query(args) => query::run(g, args).await,
            Command::Identity(args) => inspect::identity(g, args).await,
            Command::Ledger(args) => inspect::ledger(g, args).await,
            Command::Maintain(args) => maintain::run(g, args).await,
            Command::Definitions(args) => definitions::run(g, args).await,
            Command::Merge(args) => merge::run(g, args).await,
            Command::Assert(args) => assert::run(g, args).await,
            Command::Timeline(args) => timeline::run(g, args).await,
        }
    });
    // The job's work and output are complete here. A background task that outlives it (seen:
    // the catalog pool's maintenance task spinning after the pool was dropped) must not keep
    // the process alive, so the runtime gets a bounded shutdown instead of a joining drop.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    outcome
}

/// Logs go to stderr (stdout carries the result JSON), as text or JSON lines.
fn init_logging(global: &Global) {
    // The Delta kernel logs an error for every table it probes that does not exist yet;
    // those surface as results where they matter.
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "defacto_jobs={0},defacto_core={0},warn,buoyant_kernel=off",
        global.log_level
    ))
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match global.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Console => builder.try_init(),
    };
}

/// The jobs that also exist as binaries of their own name.
pub const JOB_BINARIES: [&str; 4] = ["normalize", "build", "tick", "export"];

/// Runs with the process arguments; under a job's name, as that job.
pub fn main_from_env() -> i32 {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let invoked = args
        .first()
        .and_then(|p| {
            std::path::Path::new(p)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    if let Some(job) = JOB_BINARIES.iter().find(|j| **j == invoked) {
        // `build --help` shows `Usage: defacto build`: the job runs as the subcommand it is.
        args[0] = OsString::from("defacto");
        args.insert(1, OsString::from(*job));
    }
    main_with_args(args)
}
