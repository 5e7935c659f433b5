//! Definitions: where they come from (directory or document form), reading them into the
//! model, validating them, and the normalized document that hashes and versions derive from
//! (DEFINITIONS.md).

mod document;
pub mod draft;
pub mod mode;
pub mod model;
pub mod normalized;
mod parse;
mod validate;
pub mod yaml;

use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde_json::Value as Json;

pub use document::{load_path, raw_from_document, raw_from_yaml_text};
pub use model::*;
pub use normalized::{Hashes, NormalizedDocument};
pub use parse::{parse_threshold, RawDefinition, RawDefinitions};

/// One finding of loading or validation, naming the file (directory form), the path inside
/// the definition and the reason:
/// `entities/customer.yaml: customer.states.active.when.upgrade.effects[1]: unknown state 'actve'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: Option<String>,
    /// Where inside the file: `customer.states.active.when.upgrade.effects[1]`, or the
    /// `line L, column C` of a YAML syntax error.
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: Option<String>, path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            file,
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(file) = &self.file {
            write!(f, "{file}")?;
            sep = ": ";
        }
        if !self.path.is_empty() {
            write!(f, "{sep}{}", self.path)?;
            sep = ": ";
        }
        write!(f, "{sep}{}", self.message)
    }
}

/// Invalid definitions (RESULTS.md §11): the message, and every error it stands for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DefinitionError {
    pub message: String,
    pub errors: Vec<String>,
}

impl DefinitionError {
    fn from_diagnostics(errors: &[Diagnostic]) -> Self {
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let message = if errors.len() == 1 {
            errors[0].clone()
        } else {
            format!("Invalid definitions: {}", errors.join("; "))
        };
        DefinitionError { message, errors }
    }
}

/// `ValidationResult` of DEFINITIONS.md §7.5 / RESULTS.md §8.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationResult {
    pub valid: bool,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// The outcome of validating a definition set: the model when it could be read, and every
/// finding.
#[derive(Debug, Clone)]
pub struct Validation {
    pub definitions: Option<Definitions>,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Validation {
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn result(&self) -> ValidationResult {
        ValidationResult {
            valid: self.errors.is_empty(),
            errors: self.errors.iter().map(ToString::to_string).collect(),
            warnings: self.warnings.iter().map(ToString::to_string).collect(),
        }
    }

    /// The definitions when valid, else a `DefinitionError` carrying every error.
    pub fn into_definitions(self) -> Result<Definitions, DefinitionError> {
        match self.definitions {
            Some(defs) if self.errors.is_empty() => Ok(defs),
            _ => Err(DefinitionError::from_diagnostics(&self.errors)),
        }
    }
}

/// Runs all three layers of validation (§7.1 structural, §7.3 compilation, §7.2 semantic)
/// and the warnings of §7.4 on raw definitions.
pub fn validate(raw: &RawDefinitions) -> Validation {
    match parse::read(raw) {
        Err(structural) => Validation {
            definitions: None,
            errors: vec![structural],
            warnings: Vec::new(),
        },
        Ok((defs, mut errors)) => {
            let findings = validate::check(&defs);
            errors.extend(findings.errors);
            Validation {
                definitions: Some(defs),
                errors,
                warnings: findings.warnings,
            }
        }
    }
}

/// Loads and validates the definitions at `path` (a project directory, or a single YAML/JSON
/// document file). A file that cannot be read or parsed is the one error of the result.
pub fn validate_path(path: &Path) -> Validation {
    match load_path(path) {
        Ok(raw) => validate(&raw),
        Err(d) => Validation {
            definitions: None,
            errors: vec![d],
            warnings: Vec::new(),
        },
    }
}

impl Definitions {
    /// Loads, reads and validates definitions at `path`; every error blocks ([FIX D5]).
    pub fn load(path: &Path) -> Result<Definitions, DefinitionError> {
        validate_path(path).into_definitions()
    }

    /// Reads and validates definitions given in the document form (§1.2).
    pub fn from_document(doc: &Json) -> Result<Definitions, DefinitionError> {
        let raw = raw_from_document(doc).map_err(|d| DefinitionError::from_diagnostics(&[d]))?;
        validate(&raw).into_definitions()
    }

    /// Reads and validates YAML text in the document form.
    pub fn from_yaml_str(text: &str) -> Result<Definitions, DefinitionError> {
        let raw = document::raw_from_yaml_text(text, None)
            .map_err(|d| DefinitionError::from_diagnostics(&[d]))?;
        validate(&raw).into_definitions()
    }
}
