//! The in-process entry of the language bindings (the Python package in `python/`): one call
//! runs one `defacto` command line — the same parsing, the same jobs, the same results as the
//! binary — and hands back what the command would have printed, instead of printing it, and
//! its error as a typed `Error` instead of a line on stderr and an exit status.
//!
//! Rows (`table`, `query`) can come back as Arrow IPC stream bytes, so that a caller gets
//! typed columns without parsing text.

use std::ffi::OsString;

use clap::Parser;
use deltalake::arrow::ipc::writer::StreamWriter;
use deltalake::arrow::record_batch::RecordBatch;

use crate::cli::{Cli, Command, Global};
use crate::error::{Error, Result};
use crate::output;

/// What one command produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The exit status the binary would have returned (0, or e.g. 1 for `validate` of invalid
    /// definitions and for a failed `assert`, 3 over `--max-failures`).
    pub status: i32,
    /// What the binary would have written on stdout.
    pub stdout: Vec<u8>,
    /// With `arrow`: the rows the command would have printed, as an Arrow IPC stream; `None`
    /// when the command printed no rows.
    pub arrow: Option<Vec<u8>>,
}

/// Runs the command line `args` (without the program name) in this process. With `arrow`,
/// `table` and `query` return their rows in `Outcome::arrow` and print nothing.
///
/// Usage errors (unknown options, a missing argument) are `Error::Config` with clap's message;
/// `--help` and `--version` are successful calls whose stdout is the text.
pub fn call(args: &[String], arrow: bool) -> Result<Outcome> {
    let argv = std::iter::once(OsString::from("defacto")).chain(args.iter().map(OsString::from));
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            return Ok(Outcome {
                status: 0,
                stdout: e.render().to_string().into_bytes(),
                arrow: None,
            })
        }
        Err(e) => {
            let text = e.render().to_string();
            let text = text.trim_end().trim_start_matches("error: ");
            return Err(Error::Config(text.to_string()));
        }
    };
    let (status, captured) = output::capture(arrow, || dispatch(&cli));
    let status = status?;
    let arrow = match captured.batches {
        Some(batches) if !batches.is_empty() => Some(ipc_stream(&batches)?),
        // No rows: the columns still matter to a DataFrame, so plan the rows' SQL again for
        // its schema and hand over an empty stream of that schema.
        Some(_) => match rows_sql(&cli.command) {
            Some(sql) => Some(empty_stream(&cli.global, &sql)?),
            None => None,
        },
        None => None,
    };
    Ok(Outcome {
        status,
        stdout: captured.stdout,
        arrow,
    })
}

/// The SQL, over the state tables `defacto query` knows, whose columns a row command prints.
fn rows_sql(command: &Command) -> Option<String> {
    match command {
        Command::Table(args) => Some(format!(
            "SELECT * FROM \"{}_history\"",
            args.entity.replace('"', "\"\"")
        )),
        Command::Query(args) => Some(args.sql.clone()),
        _ => None,
    }
}

/// An Arrow IPC stream with the schema of `sql`'s result and no rows.
fn empty_stream(global: &Global, sql: &str) -> Result<Vec<u8>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let schema = runtime.block_on(async {
        let ctx = crate::context::Context::open(global, "query", None).await?;
        let (row, defs) = ctx.active_definitions().await?;
        let (session, _) =
            crate::jobs::query::state_session(&ctx.lake, &defs, &row.version).await?;
        let df = session
            .sql(sql)
            .await
            .map_err(|e| Error::Query(e.to_string()))?;
        Ok::<_, Error>(df.schema().inner().clone())
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    let schema = schema?;
    let failed = |e: deltalake::arrow::error::ArrowError| Error::Query(e.to_string());
    let mut buf = Vec::new();
    let mut writer = StreamWriter::try_new(&mut buf, &schema).map_err(failed)?;
    writer.finish().map_err(failed)?;
    drop(writer);
    Ok(buf)
}

/// Record batches as one Arrow IPC stream (schema of the first batch).
pub fn ipc_stream(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let failed = |e: deltalake::arrow::error::ArrowError| Error::Query(e.to_string());
    let mut buf = Vec::new();
    if let Some(first) = batches.first() {
        let mut writer = StreamWriter::try_new(&mut buf, &first.schema()).map_err(failed)?;
        for batch in batches {
            writer.write(batch).map_err(failed)?;
        }
        writer.finish().map_err(failed)?;
    }
    Ok(buf)
}

/// The command's job, exactly as the binary runs it.
fn dispatch(cli: &Cli) -> Result<i32> {
    crate::cli::run(cli)
}

/// The kind of an error as the bindings name their exception classes (RESULTS.md §11).
pub fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Config(_) => "ConfigError",
        Error::Definition(_) => "DefinitionError",
        Error::NotFound(_) => "NotFoundError",
        Error::Storage(_) | Error::Io(_) => "StorageError",
        Error::Query(_) => "QueryError",
        Error::Build(_) => "BuildError",
        Error::Identity(_) => "IdentityError",
        Error::Ingest(_) => "IngestError",
    }
}

/// The error's message without the `<Kind>: ` prefix of its display.
pub fn error_message(e: &Error) -> String {
    let text = e.to_string();
    let prefix = format!("{}: ", error_kind(e));
    match text.strip_prefix(&prefix) {
        Some(rest) => rest.to_string(),
        None => text,
    }
}

/// For a DefinitionError: every error it gathers (the messages `defacto validate` prints).
pub fn error_details(e: &Error) -> Vec<String> {
    match e {
        Error::Definition(d) => d.errors.clone(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_are_config_errors_and_help_is_output() {
        let err = call(&["no-such-command".into()], false).unwrap_err();
        assert_eq!(error_kind(&err), "ConfigError");
        let help = call(&["--help".into()], false).unwrap();
        assert_eq!(help.status, 0);
        assert!(String::from_utf8_lossy(&help.stdout).contains("Usage"));
    }

    #[test]
    fn validate_output_is_captured_not_printed() {
        let dir = tempfile::tempdir().unwrap();
        let doc = dir.path().join("defs.json");
        std::fs::write(&doc, r#"{"entities": {}, "sources": {}}"#).unwrap();
        let args: Vec<String> = vec![
            "--config".into(),
            doc.display().to_string(),
            "validate".into(),
            "--format".into(),
            "json".into(),
        ];
        let out = call(&args, false).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(json.get("valid").is_some(), "{json}");
    }

    #[test]
    fn error_messages_lose_their_kind_prefix() {
        let e = Error::NotFound("Version 'v9' not found".into());
        assert_eq!(error_kind(&e), "NotFoundError");
        assert_eq!(error_message(&e), "Version 'v9' not found");
    }
}
