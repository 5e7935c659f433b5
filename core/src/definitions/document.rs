//! The two forms definitions come in (DEFINITIONS.md §1): a project directory of YAML files,
//! or one document with `entities`, `sources` and `schemas` mappings.

use std::fs;
use std::path::Path;

use serde_json::Value as Json;

use super::model::Origin;
use super::parse::{RawDefinition, RawDefinitions};
use super::{yaml, Diagnostic};

/// Loads raw definitions from a project directory, or from a single document file (`.yaml`,
/// `.yml` or `.json`) when `path` is a file.
pub fn load_path(path: &Path) -> Result<RawDefinitions, Diagnostic> {
    if path.is_dir() {
        return load_directory(path);
    }
    let text = read_text(path, &path.display().to_string())?;
    let name = path.display().to_string();
    if path.extension().is_some_and(|e| e == "json") {
        let doc: Json = serde_json::from_str(&text).map_err(|e| {
            Diagnostic::new(
                Some(name.clone()),
                format!("line {}, column {}", e.line(), e.column()),
                format!("malformed JSON: {e}"),
            )
        })?;
        return raw_from_document(&doc).map_err(|d| Diagnostic {
            file: Some(name),
            ..d
        });
    }
    raw_from_yaml_text(&text, Some(name))
}

/// Reads YAML text holding the document form.
pub fn raw_from_yaml_text(text: &str, file: Option<String>) -> Result<RawDefinitions, Diagnostic> {
    let doc = yaml::load(text).map_err(|e| yaml_diagnostic(file.clone(), e))?;
    let value = doc.value.unwrap_or(Json::Object(Default::default()));
    raw_from_document(&value).map_err(|d| Diagnostic { file, ..d })
}

/// The document form (§1.2): each of `entities`, `sources`, `schemas` a mapping from name
/// to body; missing keys mean none, unknown keys are ignored.
pub fn raw_from_document(doc: &Json) -> Result<RawDefinitions, Diagnostic> {
    let obj = doc.as_object().ok_or_else(|| {
        Diagnostic::new(
            None,
            "",
            "a definitions document must be a mapping with entities, sources and schemas",
        )
    })?;
    let part = |key: &str| -> Result<Vec<RawDefinition>, Diagnostic> {
        match obj.get(key) {
            None | Some(Json::Null) => Ok(Vec::new()),
            Some(Json::Object(m)) => Ok(m
                .iter()
                .map(|(name, body)| RawDefinition {
                    name: name.clone(),
                    body: body.clone(),
                    origin: Origin::default(),
                })
                .collect()),
            Some(_) => Err(Diagnostic::new(
                None,
                key,
                format!("'{key}' must be a mapping from name to definition"),
            )),
        }
    };
    Ok(RawDefinitions {
        entities: part("entities")?,
        sources: part("sources")?,
        schemas: part("schemas")?,
    })
}

/// The directory form (§1.1): `entities/`, `sources/`, and event schemas from both
/// `schemas/` and `events/`; each optional; `.yaml`/`.yml` files in byte order of their names.
fn load_directory(dir: &Path) -> Result<RawDefinitions, Diagnostic> {
    Ok(RawDefinitions {
        entities: load_folders(dir, &["entities"])?,
        sources: load_folders(dir, &["sources"])?,
        schemas: load_folders(dir, &["schemas", "events"])?,
    })
}

/// Loads the definitions of one kind from its folders; a name defined twice is an error.
fn load_folders(dir: &Path, folders: &[&str]) -> Result<Vec<RawDefinition>, Diagnostic> {
    let mut out: Vec<RawDefinition> = Vec::new();
    for folder in folders {
        let path = dir.join(folder);
        if !path.is_dir() {
            continue;
        }
        for file_name in yaml_files(&path, folder)? {
            let rel = format!("{folder}/{file_name}");
            let text = read_text(&path.join(&file_name), &rel)?;
            let doc = yaml::load(&text).map_err(|e| yaml_diagnostic(Some(rel.clone()), e))?;
            let Some(value) = doc.value else { continue };
            let Json::Object(entries) = value else {
                return Err(Diagnostic::new(
                    Some(rel),
                    "",
                    "the file must be a mapping from definition name to definition",
                ));
            };
            for (name, body) in entries {
                if let Some(first) = out.iter().find(|d| d.name == name) {
                    let where_first = first.origin.file.clone().unwrap_or_default();
                    return Err(Diagnostic::new(
                        Some(rel),
                        name.clone(),
                        format!(
                            "duplicate definition '{name}' in {}: already defined in {where_first}",
                            folders.join("/ and ") + "/"
                        ),
                    ));
                }
                out.push(RawDefinition {
                    name,
                    body,
                    origin: Origin {
                        file: Some(rel.clone()),
                    },
                });
            }
        }
    }
    Ok(out)
}

/// Names of the regular `.yaml`/`.yml` files of a folder, in byte order.
fn yaml_files(path: &Path, folder: &str) -> Result<Vec<String>, Diagnostic> {
    let entries = fs::read_dir(path).map_err(|e| {
        Diagnostic::new(
            Some(format!("{folder}/")),
            "",
            format!("cannot read directory: {e}"),
        )
    })?;
    let mut names = Vec::new();
    for entry in entries.flatten() {
        let is_file =
            entry.file_type().map(|t| t.is_file()).unwrap_or(false) || entry.path().is_file();
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_file && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn read_text(path: &Path, shown: &str) -> Result<String, Diagnostic> {
    let bytes = fs::read(path).map_err(|e| {
        Diagnostic::new(
            Some(shown.to_string()),
            "",
            format!("cannot read file: {e}"),
        )
    })?;
    String::from_utf8(bytes).map_err(|e| {
        Diagnostic::new(
            Some(shown.to_string()),
            "",
            format!(
                "the file is not valid UTF-8 (byte {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

fn yaml_diagnostic(file: Option<String>, e: yaml::YamlError) -> Diagnostic {
    Diagnostic::new(
        file,
        format!("line {}, column {}", e.line, e.column),
        format!("malformed YAML: {}", e.message),
    )
}
