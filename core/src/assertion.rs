//! Checking an entity's current row against expected values: `assert_entity` and
//! `defacto assert` (RESULTS.md §10). Pure: the caller reads the row; this module decides and
//! words the verdict.

use serde_json::{Map, Value as Json};

use crate::normalize::parse_rfc3339;

/// One expectation: the entity's state, or a property's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Expectation {
    State(String),
    Property(String, Json),
}

impl Expectation {
    /// Parses a command-line `KEY=VALUE` (split at the first `=`). `state=NAME` expects a state;
    /// any other VALUE is a JSON scalar when it parses as one (`49`, `"49"`, `true`, `null`) and a
    /// plain string otherwise (`pro`, `[1]`).
    pub fn parse(arg: &str) -> Result<Expectation, String> {
        let (key, value) = arg
            .split_once('=')
            .filter(|(key, _)| !key.is_empty())
            .ok_or_else(|| format!("'{arg}' is not KEY=VALUE"))?;
        if key == "state" {
            return Ok(Expectation::State(value.to_string()));
        }
        let value = match serde_json::from_str::<Json>(value) {
            Ok(v) if !v.is_array() && !v.is_object() => v,
            _ => Json::String(value.to_string()),
        };
        Ok(Expectation::Property(key.to_string(), value))
    }

    fn key(&self) -> &str {
        match self {
            Expectation::State(_) => "state",
            Expectation::Property(key, _) => key,
        }
    }
}

/// A column of the entity type's current table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// Values are instants (compared by instant, not by text).
    pub datetime: bool,
}

/// What the caller found for the entity.
#[derive(Debug, Clone)]
pub struct Found<'a> {
    pub entity_type: &'a str,
    /// Whether the type has any current row at all.
    pub type_has_rows: bool,
    /// The entity's current row; a column absent from the map is null.
    pub row: Option<&'a Map<String, Json>>,
    pub columns: &'a [Column],
    /// The column that holds the state.
    pub state_column: &'a str,
}

/// A failed check: the message of the first failing check, and the diff of every key given
/// (empty when the entity has no current row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub diff: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for line in &self.diff {
            write!(f, "\n{line}")?;
        }
        Ok(())
    }
}

/// Runs the checks of RESULTS.md §10 in order; `found` is `None` when no entity type knows the id.
pub fn check(
    entity_id: &str,
    found: Option<&Found<'_>>,
    expectations: &[Expectation],
) -> Result<(), Failure> {
    let fail = |message: String| Failure {
        message,
        diff: Vec::new(),
    };
    let Some(found) = found else {
        return Err(fail(format!("{entity_id} not found in any entity type")));
    };
    let tag = format!("{} {entity_id}", found.entity_type);
    if !found.type_has_rows {
        return Err(fail(format!("{tag} has no rows in current state")));
    }
    let Some(row) = found.row else {
        return Err(fail(format!(
            "{tag} not in current state (may have been erased or merged)"
        )));
    };
    let mut first: Option<String> = None;
    let mut diff = Vec::new();
    for expectation in expectations {
        let key = expectation.key();
        let (expected, actual, column) = match expectation {
            Expectation::State(state) => (
                Json::String(state.clone()),
                Some(cell(row, found.state_column)),
                found.columns.iter().find(|c| c.name == found.state_column),
            ),
            Expectation::Property(name, value) => {
                let column = found.columns.iter().find(|c| &c.name == name);
                (value.clone(), column.map(|c| cell(row, &c.name)), column)
            }
        };
        match actual {
            Some(actual) if equal(&expected, &actual, column.is_some_and(|c| c.datetime)) => {
                diff.push(format!("  {key}: {actual}"));
            }
            Some(actual) => {
                first.get_or_insert_with(|| match expectation {
                    Expectation::State(state) => format!(
                        "{tag} expected state '{state}', got '{}'",
                        actual.as_str().unwrap_or_default()
                    ),
                    Expectation::Property(..) => {
                        format!("{tag} {key}: expected {expected}, got {actual}")
                    }
                });
                diff.push(format!("- {key}: {expected}"));
                diff.push(format!("+ {key}: {actual}"));
            }
            None => {
                first.get_or_insert_with(|| {
                    let mut names: Vec<&str> =
                        found.columns.iter().map(|c| c.name.as_str()).collect();
                    names.sort_unstable();
                    format!(
                        "{tag} property '{key}' not found in columns [{}]",
                        names.join(", ")
                    )
                });
                diff.push(format!("- {key}: {expected}"));
                diff.push(format!("+ {key}: (no such property)"));
            }
        }
    }
    match first {
        None => Ok(()),
        Some(message) => Err(Failure { message, diff }),
    }
}

fn cell(row: &Map<String, Json>, column: &str) -> Json {
    row.get(column).cloned().unwrap_or(Json::Null)
}

/// Equality of §10: numbers numerically, strings exactly (instants by instant in a datetime
/// column), null only with null, booleans exactly.
fn equal(expected: &Json, actual: &Json, datetime: bool) -> bool {
    match (expected, actual) {
        (Json::Number(a), Json::Number(b)) => a.as_f64() == b.as_f64(),
        (Json::String(a), Json::String(b)) if datetime => match (instant_of(a), instant_of(b)) {
            (Some(a), Some(b)) => a == b,
            _ => a == b,
        },
        _ => expected == actual,
    }
}

/// An RFC 3339 instant, or a date-time without offset read as UTC (how Arrow writes a
/// timestamp column whose zone is UTC).
fn instant_of(text: &str) -> Option<crate::Instant> {
    parse_rfc3339(text).or_else(|| {
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()
            .map(|t| t.and_utc())
    })
}
