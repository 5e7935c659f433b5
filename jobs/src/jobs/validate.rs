//! `defacto validate`: every structural, compilation and semantic error and every warning of
//! the definitions, each naming the file, the path inside it and the reason.

use clap::{Args, ValueEnum};
use defacto_core::definitions::{validate_path, ValidationResult};

use crate::cli::Global;
use crate::error::Result;
use crate::output;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Output: a readable report, or the ValidationResult as JSON.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Validates the definitions of `--config`; the exit status is 0 when they are valid, else 1.
pub fn run(global: &Global, args: &ValidateArgs) -> Result<i32> {
    let result = validate_path(global.config_path()?).result();
    output::write_result_file(global.result_file.as_deref(), &result)?;
    match args.format {
        Format::Json => output::print(&output::to_json(&result))?,
        Format::Text => output::print(&report(&global.config.display().to_string(), &result))?,
    }
    Ok(if result.valid { 0 } else { 1 })
}

fn report(config: &str, r: &ValidationResult) -> String {
    let mut out = String::new();
    for e in &r.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    for w in &r.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    out.push_str(&format!(
        "{config}: {} ({}, {})\n",
        if r.valid { "valid" } else { "invalid" },
        plural(r.errors.len(), "error"),
        plural(r.warnings.len(), "warning"),
    ));
    out
}
