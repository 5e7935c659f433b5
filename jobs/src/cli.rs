//! The command line (ARCHITECTURE.md "Command line"): global options, each also read from a
//! `DEFACTO_*` environment variable, and one subcommand per job. `main_with_args` maps errors
//! to exit statuses and prints one clear line per error.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::Error;
use crate::jobs::validate::{self, ValidateArgs};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Console,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the definitions: every error and warning, with file and path.
    Validate(ValidateArgs),
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

fn run(cli: &Cli) -> Result<i32, Error> {
    match &cli.command {
        Command::Validate(args) => validate::run(&cli.global, args),
    }
}
