//! The catalog database (SQLite by default, Postgres in production): definition versions,
//! build state per (version, shard), the ledger sequence allocator and cursors, identity,
//! merge_log, rebuild requests, working state, leases and the log of job runs. One schema
//! for both databases, written in the SQL they share; tables live in schema `{namespace}` on
//! Postgres and are prefixed `{namespace}_` in SQLite.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use defacto_core::definitions::mode::StoredState;
use defacto_core::definitions::Hashes;
use defacto_core::identity::{IdentityChanges, Key, MemoryIdentity, MergeLogRow};
use defacto_core::interpret::{persist, Slot};
use defacto_core::value::{timestamp_text, Instant};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A connection pool to the catalog, with the namespace its tables live in.
#[derive(Clone)]
pub struct Catalog {
    pool: AnyPool,
    dialect: Dialect,
    namespace: String,
}

fn db(op: &str, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("{op} failed: {e}"))
}

/// Migrations, in order; `{t:name}` is replaced by the qualified table name. Each runs once,
/// recorded in `schema_migrations` by its position: new migrations go at the end.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {t:definition_versions} (
        version TEXT PRIMARY KEY, definitions TEXT NOT NULL,
        definition_hash TEXT NOT NULL, source_hash TEXT NOT NULL, identity_hash TEXT NOT NULL,
        seed_definition_hash TEXT NOT NULL, seed_source_hash TEXT NOT NULL, seed_identity_hash TEXT NOT NULL,
        active BIGINT NOT NULL DEFAULT 0, created_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {t:build_state} (
        key TEXT PRIMARY KEY, version TEXT NOT NULL, cursor_seq BIGINT NOT NULL DEFAULT 0, watermark TEXT,
        definition_hash TEXT NOT NULL, source_hash TEXT NOT NULL, identity_hash TEXT NOT NULL,
        salt_fingerprint TEXT NOT NULL DEFAULT '', requests_applied BIGINT NOT NULL DEFAULT 0,
        dirty BIGINT NOT NULL DEFAULT 0, last_build_time TEXT, last_build_mode TEXT)",
    "CREATE TABLE IF NOT EXISTS {t:counters} (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {t:resolve_state} (
        id BIGINT PRIMARY KEY, cursor_seq BIGINT NOT NULL DEFAULT 0, source_hash TEXT, identity_hash TEXT,
        salt_fingerprint TEXT, reset_due BIGINT NOT NULL DEFAULT 0, writing BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS {t:identity} (
        entity_type TEXT NOT NULL, hint_type TEXT NOT NULL, hint_value TEXT NOT NULL,
        entity_id TEXT NOT NULL, created_at TEXT NOT NULL,
        PRIMARY KEY (entity_type, hint_type, hint_value))",
    "CREATE TABLE IF NOT EXISTS {t:entities} (entity_id TEXT PRIMARY KEY, entity_type TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {t:merge_log} (
        from_entity_id TEXT PRIMARY KEY, into_entity_id TEXT NOT NULL, timestamp TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {t:rebuild_requests} (
        position BIGINT PRIMARY KEY, kind TEXT NOT NULL, loser TEXT, winner TEXT, entity_type TEXT,
        entity_id TEXT, timestamp TEXT)",
    "CREATE TABLE IF NOT EXISTS {t:working_state} (
        state_key TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, slot TEXT NOT NULL,
        PRIMARY KEY (state_key, entity_type, entity_id))",
    "CREATE TABLE IF NOT EXISTS {t:leases} (
        name TEXT PRIMARY KEY, holder TEXT NOT NULL, since TEXT NOT NULL, expires_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {t:job_runs} (
        id TEXT PRIMARY KEY, job TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT,
        status TEXT NOT NULL, result TEXT)",
    "CREATE TABLE IF NOT EXISTS {t:drafts} (
        name TEXT PRIMARY KEY, based_on TEXT NOT NULL, base TEXT NOT NULL, document TEXT NOT NULL,
        updated_at TEXT NOT NULL)",
    // The earliest instant a time rule of the slot can fire, as fixed-width text (`NEVER` when
    // none can; NULL for rows written before this column, which are always loaded).
    "ALTER TABLE {t:working_state} ADD COLUMN next_due TEXT",
    // Per export target and table, the Delta version of the history table last exported there:
    // the base an incremental export diffs against.
    "CREATE TABLE IF NOT EXISTS {t:exports} (
        target TEXT NOT NULL, table_name TEXT NOT NULL, delta_version BIGINT NOT NULL,
        exported_at TEXT NOT NULL, PRIMARY KEY (target, table_name))",
    // An erase in progress: its plan (cascade set, erased keys, ledger sequences), so that a
    // re-run after a crash finishes the same erase. Deleted when the erase completes.
    "CREATE TABLE IF NOT EXISTS {t:erasures} (entity_id TEXT PRIMARY KEY, plan TEXT NOT NULL)",
    // An incremental resolve loads only the identity its events reach: an entity's keys and
    // the merges won by an entity are looked up by entity.
    "CREATE INDEX IF NOT EXISTS {i:identity_by_entity} ON {t:identity} (entity_id)",
    "CREATE INDEX IF NOT EXISTS {i:merge_log_by_winner} ON {t:merge_log} (into_entity_id)",
    // An incremental build loads the slots with a time rule due before its `as_of`.
    "CREATE INDEX IF NOT EXISTS {i:working_state_by_due} ON {t:working_state} (state_key, next_due)",
    // It finds them through indexes that leave out the slots with no time rule to fire
    // (`NEVER`, most of them), so that rewriting such a slot touches no index page. (An index
    // name is qualified like a table's when it is dropped.)
    "DROP INDEX IF EXISTS {t:working_state_by_due}",
    "CREATE INDEX IF NOT EXISTS {i:working_state_due} ON {t:working_state} (state_key, next_due)
        WHERE next_due < 'NEVER'",
    "CREATE INDEX IF NOT EXISTS {i:working_state_due_unknown} ON {t:working_state} (state_key)
        WHERE next_due IS NULL",
];

/// The ledger sequence allocator's counter, and `normalize`'s cursor.
pub const NEXT_SEQUENCE: &str = "next_sequence";
pub const NORMALIZE_CURSOR: &str = "normalize_cursor";

/// What the resolve step records with the identity store (PIPELINE.md §5.5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolveState {
    pub cursor: i64,
    pub source_hash: Option<String>,
    pub identity_hash: Option<String>,
    pub salt_fingerprint: Option<String>,
    pub reset_due: bool,
    pub writing: bool,
}

/// A build-state record (DEFINITIONS.md §8.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildState {
    pub key: String,
    pub version: String,
    pub cursor: i64,
    pub watermark: Option<String>,
    pub hashes: Hashes,
    pub salt_fingerprint: String,
    pub requests_applied: i64,
    pub dirty: bool,
    pub last_build_time: Option<String>,
    pub last_build_mode: Option<String>,
}

impl BuildState {
    pub fn stored(&self) -> StoredState {
        StoredState {
            hashes: self.hashes.clone(),
            salt_fingerprint: self.salt_fingerprint.clone(),
            dirty: self.dirty,
            cursor: self.cursor,
        }
    }
}

/// A rebuild request (PIPELINE.md §14): a merge, or an entity `redact` changed.
/// The `kind` of a rebuild request for a merge identity resolution discovered.
pub const IDENTITY_MERGE: &str = "merge";
/// The `kind` of a rebuild request for an explicit `defacto merge`.
pub const EXPLICIT_MERGE: &str = "explicit_merge";
/// The `kind` of a rebuild request for an entity whose ledger rows `redact` rewrote.
pub const REDACT: &str = "redact";
/// The `kind` a request takes when `erase` removed the entities it named: it keeps its
/// position and asks for nothing.
pub const ERASED: &str = "erased";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildRequest {
    pub position: i64,
    pub kind: String,
    pub loser: Option<String>,
    pub winner: Option<String>,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub timestamp: Option<String>,
}

/// A registered definition version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    pub version: String,
    pub definitions: String,
    pub hashes: Hashes,
    pub seed: Hashes,
    pub active: bool,
    pub created_at: String,
}

/// A mapping row `[entity_type, hint_type, hint_value, entity_id]`.
fn mapping_row(r: Vec<String>) -> (Key, String) {
    let mut r = r.into_iter();
    let mut next = || r.next().unwrap_or_default();
    let key = Key::new(next(), next(), next());
    (key, next())
}

/// Rows per bulk INSERT statement: bounds the JSON text one statement carries.
const ROWS_PER_INSERT: usize = 20_000;

impl Dialect {
    /// A FROM-clause item over the elements of the JSON array bound as `$1`, as rows of one
    /// column `j.value`; `j.value ->> i` is element `i` of an array element as text, in both
    /// dialects.
    fn json_rows(self) -> &'static str {
        match self {
            Dialect::Sqlite => "json_each($1) AS j",
            Dialect::Postgres => "jsonb_array_elements($1::jsonb) AS j(value)",
        }
    }
}

/// Inserts `rows` (text cells, in the order of `head`'s columns) with statements
/// `INSERT … SELECT … FROM <JSON array> <conflict>`, each carrying `ROWS_PER_INSERT` rows as
/// one bound JSON text: drivers pay per bound parameter (SQLite's binding looks each one up
/// by name), and one parameter per statement costs nothing however many rows it holds.
/// Rows are inserted in order, as multi-row `VALUES` would insert them, and made one
/// statement's worth at a time (a full build's working state is a row per entity).
async fn insert_many(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    dialect: Dialect,
    head: &str,
    conflict: &str,
    rows: impl IntoIterator<Item = Vec<String>>,
    op: &str,
) -> Result<()> {
    let mut rows = rows.into_iter().peekable();
    let Some(width) = rows.peek().map(Vec::len) else {
        return Ok(());
    };
    let cells: Vec<String> = (0..width).map(|i| format!("j.value ->> {i}")).collect();
    // SQLite needs a WHERE before an upsert's ON CONFLICT after a SELECT (parsing ambiguity).
    let sql = format!(
        "{head} SELECT {} FROM {} WHERE TRUE {conflict}",
        cells.join(", "),
        dialect.json_rows()
    );
    while rows.peek().is_some() {
        let chunk: Vec<Vec<String>> = rows.by_ref().take(ROWS_PER_INSERT).collect();
        let json = serde_json::to_string(&chunk).map_err(|e| db(op, e))?;
        drop(chunk);
        q(&sql)
            .bind(json)
            .execute(&mut **tx)
            .await
            .map_err(|e| db(op, e))?;
    }
    Ok(())
}

/// A query over SQL text built here from constants and validated names (the namespace is
/// checked to be an identifier before any query runs); values are always bound.
fn q<'a>(sql: &str) -> sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
}

pub fn now_text() -> String {
    timestamp_text(&Utc::now())
}

/// The page cache of the SQLite catalog connection: up to 32 MiB (negative = KiB).
const SQLITE_CACHE_PRAGMA: &str = "PRAGMA cache_size = -32768";
/// Reads of the SQLite catalog through a memory map of up to 256 MiB instead of a `read`
/// call (and a copy) per page.
const SQLITE_MMAP_PRAGMA: &str = "PRAGMA mmap_size = 268435456";

impl Catalog {
    /// Connects, creating the SQLite file or the Postgres schema as needed, and migrates.
    pub async fn connect(url: &str, namespace: &str) -> Result<Catalog> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(Error::Config(format!(
                "unsupported database URL '{url}': use sqlite://PATH or postgres://…"
            )));
        };
        if !namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || namespace.is_empty()
        {
            return Err(Error::Config(format!(
                "namespace '{namespace}' must be letters, digits or '_'"
            )));
        }
        let url = match dialect {
            Dialect::Sqlite => sqlite_url(url)?,
            Dialect::Postgres => url.to_string(),
        };
        let sqlite = dialect == Dialect::Sqlite;
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 1 } else { 4 })
            .acquire_timeout(Duration::from_secs(60))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // SQLite's default page cache is 2 MiB; a build's upserts of identity
                        // and working state land all over tables of tens of MiB, and each
                        // page evicted is read again. A larger cap costs only what is used.
                        sqlx::Executor::execute(&mut *conn, SQLITE_CACHE_PRAGMA).await?;
                        sqlx::Executor::execute(&mut *conn, SQLITE_MMAP_PRAGMA).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| db("Connecting to the catalog database", e))?;
        let catalog = Catalog {
            pool,
            dialect,
            namespace: namespace.to_string(),
        };
        catalog.migrate().await?;
        Ok(catalog)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The qualified name of a catalog table.
    pub fn t(&self, name: &str) -> String {
        match self.dialect {
            Dialect::Sqlite => format!("{}_{name}", self.namespace),
            Dialect::Postgres => format!("\"{}\".{name}", self.namespace),
        }
    }

    /// The name of index `name` in a `CREATE INDEX` (Postgres puts an index in its table's
    /// schema and takes no schema in its name).
    fn index_name(&self, name: &str) -> String {
        match self.dialect {
            Dialect::Sqlite => format!("{}_{name}", self.namespace),
            Dialect::Postgres => name.to_string(),
        }
    }

    /// SQL with `{t:table}` replaced by the qualified table name and `{i:index}` by the
    /// index name.
    fn sql(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = ["{t:", "{i:"].iter().filter_map(|p| rest.find(p)).min() {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').expect("closed placeholder") + start;
            let name = &rest[start + 3..end];
            if rest[start..].starts_with("{t:") {
                out.push_str(&self.t(name));
            } else {
                out.push_str(&self.index_name(name));
            }
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    }

    async fn migrate(&self) -> Result<()> {
        if self.dialect == Dialect::Postgres {
            q(&format!(
                "CREATE SCHEMA IF NOT EXISTS \"{}\"",
                self.namespace
            ))
            .execute(&self.pool)
            .await
            .map_err(|e| db("Creating the catalog schema", e))?;
        }
        let table = self.t("schema_migrations");
        q(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)"
        ))
        .execute(&self.pool)
        .await
        .map_err(|e| db("Migrating the catalog", e))?;
        let applied: Vec<i64> = q(&format!("SELECT version FROM {table}"))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db("Migrating the catalog", e))?
            .iter()
            .map(|r| r.get::<i64, _>(0))
            .collect();
        for (i, m) in MIGRATIONS.iter().enumerate() {
            let version = i as i64 + 1;
            if applied.contains(&version) {
                continue;
            }
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(|e| db("Migrating the catalog", e))?;
            q(&self.sql(m))
                .execute(&mut *tx)
                .await
                .map_err(|e| db("Migrating the catalog", e))?;
            q(&format!(
                "INSERT INTO {table} (version, applied_at) VALUES ($1, $2) ON CONFLICT (version) DO NOTHING"
            ))
            .bind(version)
            .bind(now_text())
            .execute(&mut *tx)
            .await
            .map_err(|e| db("Migrating the catalog", e))?;
            tx.commit()
                .await
                .map_err(|e| db("Migrating the catalog", e))?;
        }
        Ok(())
    }

    // ---- counters -------------------------------------------------------------------------

    pub async fn counter(&self, name: &str) -> Result<i64> {
        let row = q(&self.sql("SELECT value FROM {t:counters} WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db("Reading a counter", e))?;
        Ok(row.map_or(0, |r| r.get::<i64, _>(0)))
    }

    pub async fn set_counter(&self, name: &str, value: i64) -> Result<()> {
        q(&self.sql(
            "INSERT INTO {t:counters} (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        ))
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(|e| db("Writing a counter", e))?;
        Ok(())
    }

    /// The sequence `allocate_sequences` would hand out next (for a holder of the sequence
    /// lock, which no one else allocates under).
    pub async fn next_sequence(&self) -> Result<i64> {
        Ok(self.counter(NEXT_SEQUENCE).await?.max(1))
    }

    /// Takes `n` consecutive ledger sequences; returns the first. Sequences start at 1 and a
    /// range is never handed out twice, even when its commit later fails (a gap).
    pub async fn allocate_sequences(&self, n: i64) -> Result<i64> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| db("Allocating sequences", e))?;
        q(&self.sql(
            "INSERT INTO {t:counters} (name, value) VALUES ($1, 1) ON CONFLICT (name) DO NOTHING",
        ))
        .bind(NEXT_SEQUENCE)
        .execute(&mut *tx)
        .await
        .map_err(|e| db("Allocating sequences", e))?;
        let row =
            q(&self
                .sql("UPDATE {t:counters} SET value = value + $1 WHERE name = $2 RETURNING value"))
            .bind(n)
            .bind(NEXT_SEQUENCE)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db("Allocating sequences", e))?;
        tx.commit()
            .await
            .map_err(|e| db("Allocating sequences", e))?;
        Ok(row.get::<i64, _>(0) - n)
    }

    // ---- definition versions --------------------------------------------------------------

    pub async fn versions(&self) -> Result<Vec<VersionRow>> {
        let rows = q(&self.sql(
            "SELECT version, definitions, definition_hash, source_hash, identity_hash,
                    seed_definition_hash, seed_source_hash, seed_identity_hash, active, created_at
             FROM {t:definition_versions} ORDER BY created_at, version",
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db("Reading definition versions", e))?;
        Ok(rows.iter().map(version_row).collect())
    }

    pub async fn version(&self, version: &str) -> Result<Option<VersionRow>> {
        Ok(self
            .versions()
            .await?
            .into_iter()
            .find(|v| v.version == version))
    }

    pub async fn active_version(&self) -> Result<Option<VersionRow>> {
        Ok(self.versions().await?.into_iter().find(|v| v.active))
    }

    /// Registers a version when new (DEFINITIONS.md §8.2), seeded with the active version's
    /// hashes, or its own when none is active. Returns whether it was new.
    pub async fn register_version(
        &self,
        version: &str,
        definitions: &str,
        hashes: &Hashes,
    ) -> Result<bool> {
        if self.version(version).await?.is_some() {
            return Ok(false);
        }
        let seed = match self.active_version().await? {
            Some(active) => active.hashes,
            None => hashes.clone(),
        };
        q(&self.sql(
            "INSERT INTO {t:definition_versions} (version, definitions, definition_hash, source_hash,
                identity_hash, seed_definition_hash, seed_source_hash, seed_identity_hash, active, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9) ON CONFLICT (version) DO NOTHING",
        ))
        .bind(version)
        .bind(definitions)
        .bind(&hashes.definition_hash)
        .bind(&hashes.source_hash)
        .bind(&hashes.identity_hash)
        .bind(&seed.definition_hash)
        .bind(&seed.source_hash)
        .bind(&seed.identity_hash)
        .bind(now_text())
        .execute(&self.pool)
        .await
        .map_err(|e| db("Registering a definition version", e))?;
        Ok(true)
    }

    /// `definitions activate` (DEFINITIONS.md §8.2): only to a version whose build is
    /// complete — every shard's, for a version built in shards; it runs no build.
    pub async fn activate(&self, version: &str) -> Result<()> {
        if self.version(version).await?.is_none() {
            return Err(Error::NotFound(format!("Version '{version}' not found")));
        }
        let rows =
            q(&self
                .sql("SELECT key, dirty, last_build_time FROM {t:build_state} WHERE version = $1"))
            .bind(version)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db("Reading build state", e))?;
        let complete = !rows.is_empty()
            && rows
                .iter()
                .all(|r| r.get::<i64, _>(1) == 0 && r.get::<Option<String>, _>(2).is_some());
        if !complete {
            return Err(Error::Config(format!(
                "Version '{version}' has no completed build; run build --version {version} first"
            )));
        }
        q(&self.sql(
            "UPDATE {t:definition_versions} SET active = CASE WHEN version = $1 THEN 1 ELSE 0 END",
        ))
        .bind(version)
        .execute(&self.pool)
        .await
        .map_err(|e| db("Activating a version", e))?;
        Ok(())
    }

    pub async fn put_draft(
        &self,
        name: &str,
        based_on: &str,
        base: &str,
        document: &str,
    ) -> Result<()> {
        q(&self.sql(
            "INSERT INTO {t:drafts} (name, based_on, base, document, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO UPDATE SET based_on = excluded.based_on, base = excluded.base,
                document = excluded.document, updated_at = excluded.updated_at",
        ))
        .bind(name)
        .bind(based_on)
        .bind(base)
        .bind(document)
        .bind(now_text())
        .execute(&self.pool)
        .await
        .map_err(|e| db("Saving a draft", e))?;
        Ok(())
    }

    /// A draft: (based_on, base document, document).
    pub async fn draft(&self, name: &str) -> Result<Option<(String, String, String)>> {
        let row = q(&self.sql("SELECT based_on, base, document FROM {t:drafts} WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db("Reading a draft", e))?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    // ---- build state ----------------------------------------------------------------------

    /// The build-state record of `key`, created from the version's seed hashes on first use.
    pub async fn build_state(&self, key: &str, version: &VersionRow) -> Result<BuildState> {
        let row = q(&self.sql(
            "SELECT key, version, cursor_seq, watermark, definition_hash, source_hash, identity_hash,
                    salt_fingerprint, requests_applied, dirty, last_build_time, last_build_mode
             FROM {t:build_state} WHERE key = $1",
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db("Reading build state", e))?;
        if let Some(r) = row {
            return Ok(build_state_row(&r));
        }
        // Seeded (DEFINITIONS.md §8.4) with the salt fingerprint recorded with the identity
        // store, so a new version's first build under a salt is no identity reset.
        let state = BuildState {
            key: key.to_string(),
            version: version.version.clone(),
            hashes: version.seed.clone(),
            salt_fingerprint: self
                .resolve_state()
                .await?
                .salt_fingerprint
                .unwrap_or_default(),
            requests_applied: self.request_count().await?,
            ..BuildState::default()
        };
        self.put_build_state(&state).await?;
        Ok(state)
    }

    pub async fn put_build_state(&self, s: &BuildState) -> Result<()> {
        q(&self.sql(
            "INSERT INTO {t:build_state} (key, version, cursor_seq, watermark, definition_hash, source_hash,
                identity_hash, salt_fingerprint, requests_applied, dirty, last_build_time, last_build_mode)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (key) DO UPDATE SET version = excluded.version, cursor_seq = excluded.cursor_seq,
                watermark = excluded.watermark, definition_hash = excluded.definition_hash,
                source_hash = excluded.source_hash, identity_hash = excluded.identity_hash,
                salt_fingerprint = excluded.salt_fingerprint, requests_applied = excluded.requests_applied,
                dirty = excluded.dirty, last_build_time = excluded.last_build_time,
                last_build_mode = excluded.last_build_mode",
        ))
        .bind(&s.key)
        .bind(&s.version)
        .bind(s.cursor)
        .bind(s.watermark.clone())
        .bind(&s.hashes.definition_hash)
        .bind(&s.hashes.source_hash)
        .bind(&s.hashes.identity_hash)
        .bind(&s.salt_fingerprint)
        .bind(s.requests_applied)
        .bind(s.dirty as i64)
        .bind(s.last_build_time.clone())
        .bind(s.last_build_mode.clone())
        .execute(&self.pool)
        .await
        .map_err(|e| db("Writing build state", e))?;
        Ok(())
    }

    /// Completes a build: its state, and (blue/green) the version's activation, in one
    /// transaction.
    pub async fn complete_build(&self, s: &BuildState, activate: bool) -> Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| db("Completing a build", e))?;
        q(&self.sql(
            "UPDATE {t:build_state} SET cursor_seq = $1, watermark = $2, definition_hash = $3, source_hash = $4,
                identity_hash = $5, salt_fingerprint = $6, requests_applied = $7, dirty = 0,
                last_build_time = $8, last_build_mode = $9 WHERE key = $10",
        ))
        .bind(s.cursor)
        .bind(s.watermark.clone())
        .bind(&s.hashes.definition_hash)
        .bind(&s.hashes.source_hash)
        .bind(&s.hashes.identity_hash)
        .bind(&s.salt_fingerprint)
        .bind(s.requests_applied)
        .bind(s.last_build_time.clone())
        .bind(s.last_build_mode.clone())
        .bind(&s.key)
        .execute(&mut *tx)
        .await
        .map_err(|e| db("Completing a build", e))?;
        if activate {
            q(&self.sql("UPDATE {t:definition_versions} SET active = CASE WHEN version = $1 THEN 1 ELSE 0 END"))
                .bind(&s.version)
                .execute(&mut *tx)
                .await
                .map_err(|e| db("Activating a version", e))?;
        }
        tx.commit().await.map_err(|e| db("Completing a build", e))?;
        Ok(())
    }

    /// Whether every other shard of `version` (of `total`) has a completed, clean build; the
    /// build of `key` completing now makes the set complete (blue/green for shards).
    pub async fn all_shards_complete(&self, version: &str, total: u32, key: &str) -> Result<bool> {
        for i in 0..total {
            let other = format!("{version}_s{i}");
            if other == key {
                continue;
            }
            let row =
                q(&self.sql("SELECT dirty, last_build_time FROM {t:build_state} WHERE key = $1"))
                    .bind(&other)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| db("Reading build state", e))?;
            let complete = row.is_some_and(|r| {
                r.get::<i64, _>(0) == 0 && r.get::<Option<String>, _>(1).is_some()
            });
            if !complete {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Marks every build-state record dirty (an identity reset, PIPELINE.md §5.5 step 2).
    pub async fn dirty_all(&self) -> Result<()> {
        q(&self.sql("UPDATE {t:build_state} SET dirty = 1"))
            .execute(&self.pool)
            .await
            .map_err(|e| db("Marking build state dirty", e))?;
        Ok(())
    }

    // ---- the resolve step ---------------------------------------------------------------

    pub async fn resolve_state(&self) -> Result<ResolveState> {
        let row = q(&self.sql(
            "SELECT cursor_seq, source_hash, identity_hash, salt_fingerprint, reset_due, writing
             FROM {t:resolve_state} WHERE id = 1",
        ))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db("Reading resolve state", e))?;
        Ok(row.map_or_else(ResolveState::default, |r| ResolveState {
            cursor: r.get(0),
            source_hash: r.get(1),
            identity_hash: r.get(2),
            salt_fingerprint: r.get(3),
            reset_due: r.get::<i64, _>(4) != 0,
            writing: r.get::<i64, _>(5) != 0,
        }))
    }

    pub async fn put_resolve_state(&self, s: &ResolveState) -> Result<()> {
        q(&self.sql(
            "INSERT INTO {t:resolve_state} (id, cursor_seq, source_hash, identity_hash, salt_fingerprint, reset_due, writing)
             VALUES (1, $1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET cursor_seq = excluded.cursor_seq, source_hash = excluded.source_hash,
                identity_hash = excluded.identity_hash, salt_fingerprint = excluded.salt_fingerprint,
                reset_due = excluded.reset_due, writing = excluded.writing",
        ))
        .bind(s.cursor)
        .bind(s.source_hash.clone())
        .bind(s.identity_hash.clone())
        .bind(s.salt_fingerprint.clone())
        .bind(s.reset_due as i64)
        .bind(s.writing as i64)
        .execute(&self.pool)
        .await
        .map_err(|e| db("Writing resolve state", e))?;
        Ok(())
    }

    // ---- identity ------------------------------------------------------------------------

    /// Loads the whole identity store (mappings, entities, merge_log) into memory.
    pub async fn load_identity(&self) -> Result<MemoryIdentity> {
        let mut m = MemoryIdentity::new();
        self.each_row("entities", &["entity_id"], &["entity_type"], |r| {
            m.load_entity(&r[0], &r[1]);
            Ok(())
        })
        .await?;
        self.each_row(
            "identity",
            &["entity_type", "hint_type", "hint_value"],
            &["entity_id"],
            |mut r| {
                let id = r.pop().unwrap_or_default();
                let mut r = r.into_iter();
                let mut next = || r.next().unwrap_or_default();
                m.load_mapping(Key::new(next(), next(), next()), &id);
                Ok(())
            },
        )
        .await?;
        let mut merges = Vec::new();
        self.each_row(
            "merge_log",
            &["from_entity_id"],
            &["into_entity_id", "timestamp"],
            |r| {
                merges.push((parse_instant(&r[2])?, r));
                Ok(())
            },
        )
        .await?;
        for (ts, r) in merges {
            m.load_merge(&r[0], &r[1], ts);
        }
        Ok(m)
    }

    /// Every row of a catalog table of text columns (`key`, the primary key, then `rest`),
    /// in pages of `PAGE_ROWS` rows each fetched as one JSON value: drivers pay per row, and
    /// identity (loaded whole by a first resolve pass) has a row per hint and per entity.
    async fn each_row(
        &self,
        table: &str,
        key: &[&str],
        rest: &[&str],
        mut each: impl FnMut(Vec<String>) -> Result<()>,
    ) -> Result<()> {
        const PAGE_ROWS: usize = 500_000;
        let columns = [key, rest].concat();
        let order = key.join(", ");
        let op = format!("Loading {table}");
        for page in 0.. {
            let rows = format!(
                "SELECT {} FROM {{t:{table}}} ORDER BY {order} LIMIT {PAGE_ROWS} OFFSET {}",
                columns.join(", "),
                page * PAGE_ROWS
            );
            let rows = self.fetch_as_json(&rows, &columns, None, &op).await?;
            let n = rows.len();
            for r in rows {
                each(r)?;
            }
            if n < PAGE_ROWS {
                break;
            }
        }
        Ok(())
    }

    /// The rows of query `rows` (text columns `columns`), fetched as one JSON value; `param`
    /// is bound as `$1` when given.
    async fn fetch_as_json(
        &self,
        rows: &str,
        columns: &[&str],
        param: Option<String>,
        op: &str,
    ) -> Result<Vec<Vec<String>>> {
        let columns = columns.join(", ");
        let sql = match self.dialect {
            Dialect::Sqlite => format!(
                "SELECT COALESCE(json_group_array(json_array({columns})), '[]') FROM ({rows})"
            ),
            Dialect::Postgres => format!(
                "SELECT COALESCE(json_agg(json_build_array({columns}))::text, '[]') FROM ({rows}) AS page"
            ),
        };
        let sql = self.sql(&sql);
        let mut query = q(&sql);
        if let Some(param) = param {
            query = query.bind(param);
        }
        let text: String = query
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db(op, e))?
            .get(0);
        serde_json::from_str(&text).map_err(|e| db(op, e))
    }

    /// The rows (text `columns`) of catalog `table` whose columns `by` equal one of the tuples
    /// of `values`, each tuple looked up through the index on `by` (the tuples travel as one
    /// bound JSON array per chunk).
    async fn rows_matching(
        &self,
        table: &str,
        columns: &[&str],
        by: &[&str],
        values: &[Vec<&str>],
    ) -> Result<Vec<Vec<String>>> {
        const CHUNK: usize = 50_000;
        let op = format!("Loading {table}");
        let matching: Vec<String> = by
            .iter()
            .enumerate()
            .map(|(i, c)| format!("x.{c} = j.value ->> {i}"))
            .collect();
        let selected: Vec<String> = columns.iter().map(|c| format!("x.{c}")).collect();
        // CROSS JOIN keeps SQLite's planner from scanning the table for every tuple.
        let rows = format!(
            "SELECT {} FROM {} CROSS JOIN {{t:{table}}} AS x WHERE {}",
            selected.join(", "),
            self.dialect.json_rows(),
            matching.join(" AND ")
        );
        let mut out = Vec::new();
        for chunk in values.chunks(CHUNK) {
            let json = serde_json::to_string(chunk).map_err(|e| db(&op, e))?;
            out.extend(self.fetch_as_json(&rows, columns, Some(json), &op).await?);
        }
        Ok(out)
    }

    /// The number of stored mappings, counted up to `cap` (a whole count reads an index of
    /// every mapping; a caller comparing against a threshold needs no more than it).
    pub async fn identity_size(&self, cap: usize) -> Result<usize> {
        let n: i64 =
            q(&self.sql("SELECT COUNT(*) FROM (SELECT 1 FROM {t:identity} LIMIT $1) AS capped"))
                .bind(i64::try_from(cap).unwrap_or(i64::MAX))
                .fetch_one(&self.pool)
                .await
                .map_err(|e| db("Counting identity", e))?
                .get(0);
        Ok(n.max(0) as usize)
    }

    /// The stored mappings of the given keys (keys without one are left out).
    pub async fn mappings_of(&self, keys: &[&Key]) -> Result<Vec<(Key, String)>> {
        let values: Vec<Vec<&str>> = keys
            .iter()
            .map(|k| vec![k.entity_type.as_str(), k.field.as_str(), k.value.as_str()])
            .collect();
        let by = ["entity_type", "hint_type", "hint_value"];
        let rows = self
            .rows_matching(
                "identity",
                &[&by[..], &["entity_id"]].concat(),
                &by,
                &values,
            )
            .await?;
        Ok(rows.into_iter().map(mapping_row).collect())
    }

    /// The stored mappings to the given entities.
    pub async fn mappings_to(&self, ids: &[&str]) -> Result<Vec<(Key, String)>> {
        let values: Vec<Vec<&str>> = ids.iter().map(|id| vec![*id]).collect();
        let columns = ["entity_type", "hint_type", "hint_value", "entity_id"];
        let rows = self
            .rows_matching("identity", &columns, &["entity_id"], &values)
            .await?;
        Ok(rows.into_iter().map(mapping_row).collect())
    }

    /// The entity types of the given entities (those recorded).
    pub async fn entity_types(&self, ids: &[&str]) -> Result<Vec<(String, String)>> {
        let values: Vec<Vec<&str>> = ids.iter().map(|id| vec![*id]).collect();
        let rows = self
            .rows_matching(
                "entities",
                &["entity_id", "entity_type"],
                &["entity_id"],
                &values,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|mut r| {
                let ty = r.pop().unwrap_or_default();
                (r.pop().unwrap_or_default(), ty)
            })
            .collect())
    }

    /// The merge_log rows naming one of the given entities as loser or as winner.
    pub async fn merges_naming(&self, ids: &[&str]) -> Result<Vec<MergeLogRow>> {
        let values: Vec<Vec<&str>> = ids.iter().map(|id| vec![*id]).collect();
        let columns = ["from_entity_id", "into_entity_id", "timestamp"];
        let mut out = Vec::new();
        for by in ["from_entity_id", "into_entity_id"] {
            for r in self
                .rows_matching("merge_log", &columns, &[by], &values)
                .await?
            {
                out.push(MergeLogRow {
                    timestamp: parse_instant(&r[2])?,
                    from: r[0].clone(),
                    into: r[1].clone(),
                });
            }
        }
        Ok(out)
    }

    /// Writes the changes of a resolve pass in one transaction.
    pub async fn save_identity(&self, changes: &IdentityChanges) -> Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| db("Saving identity", e))?;
        let now = now_text();
        let op = "Saving identity";
        let mappings = changes.mappings.iter().map(|(k, id)| {
            vec![
                k.entity_type.clone(),
                k.field.clone(),
                k.value.clone(),
                id.clone(),
                now.clone(),
            ]
        });
        let head = self.sql(
            "INSERT INTO {t:identity} (entity_type, hint_type, hint_value, entity_id, created_at)",
        );
        let conflict = "ON CONFLICT (entity_type, hint_type, hint_value) DO UPDATE SET entity_id = excluded.entity_id";
        insert_many(&mut tx, self.dialect, &head, conflict, mappings, op).await?;
        let entities = changes
            .entities
            .iter()
            .map(|(id, ty)| vec![id.clone(), ty.clone()]);
        let head = self.sql("INSERT INTO {t:entities} (entity_id, entity_type)");
        insert_many(
            &mut tx,
            self.dialect,
            &head,
            "ON CONFLICT (entity_id) DO NOTHING",
            entities,
            op,
        )
        .await?;
        let merges = changes
            .merges
            .iter()
            .map(|m| vec![m.from.clone(), m.into.clone(), timestamp_text(&m.timestamp)]);
        let head =
            self.sql("INSERT INTO {t:merge_log} (from_entity_id, into_entity_id, timestamp)");
        insert_many(
            &mut tx,
            self.dialect,
            &head,
            "ON CONFLICT (from_entity_id) DO NOTHING",
            merges,
            op,
        )
        .await?;
        tx.commit().await.map_err(|e| db("Saving identity", e))?;
        Ok(())
    }

    /// The identity reset's catalog part (§10.6): mappings, entities, merge_log and the
    /// unapplied rebuild requests go.
    pub async fn reset_identity(&self) -> Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| db("Resetting identity", e))?;
        for table in ["identity", "entities", "merge_log", "rebuild_requests"] {
            q(&format!("DELETE FROM {}", self.t(table)))
                .execute(&mut *tx)
                .await
                .map_err(|e| db("Resetting identity", e))?;
        }
        tx.commit().await.map_err(|e| db("Resetting identity", e))?;
        Ok(())
    }

    // ---- rebuild requests ---------------------------------------------------------------

    pub async fn request_count(&self) -> Result<i64> {
        let row = q(&self.sql("SELECT COALESCE(MAX(position), 0) FROM {t:rebuild_requests}"))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db("Reading rebuild requests", e))?;
        Ok(row.get::<i64, _>(0))
    }

    /// Records merges to rebuild, of `kind` `IDENTITY_MERGE` or `EXPLICIT_MERGE`.
    pub async fn append_merge_requests(
        &self,
        kind: &str,
        merges: &[(String, defacto_core::identity::Merge)],
    ) -> Result<()> {
        let mut position = self.request_count().await?;
        let insert = self.sql(
            "INSERT INTO {t:rebuild_requests} (position, kind, loser, winner, entity_type, entity_id, timestamp)
             VALUES ($1, $2, $3, $4, $5, NULL, $6)",
        );
        for (ty, m) in merges {
            position += 1;
            q(&insert)
                .bind(position)
                .bind(kind)
                .bind(&m.from)
                .bind(&m.into)
                .bind(ty)
                .bind(timestamp_text(&m.timestamp))
                .execute(&self.pool)
                .await
                .map_err(|e| db("Recording rebuild requests", e))?;
        }
        Ok(())
    }

    /// Records a request to rebuild one entity from its events (`redact`).
    pub async fn append_rebuild_request(
        &self,
        kind: &str,
        entity_type: &str,
        entity_id: &str,
    ) -> Result<()> {
        let position = self.request_count().await? + 1;
        q(&self.sql(
            "INSERT INTO {t:rebuild_requests} (position, kind, loser, winner, entity_type, entity_id, timestamp)
             VALUES ($1, $2, NULL, NULL, $3, $4, NULL)",
        ))
        .bind(position)
        .bind(kind.to_string())
        .bind(entity_type.to_string())
        .bind(entity_id.to_string())
        .execute(&self.pool)
        .await
        .map_err(|e| db("Recording rebuild requests", e))?;
        Ok(())
    }

    /// Requests after position `applied`, in order.
    pub async fn requests_after(&self, applied: i64) -> Result<Vec<RebuildRequest>> {
        let rows = q(&self.sql(
            "SELECT position, kind, loser, winner, entity_type, entity_id, timestamp
             FROM {t:rebuild_requests} WHERE position > $1 ORDER BY position",
        ))
        .bind(applied)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db("Reading rebuild requests", e))?;
        Ok(rows
            .iter()
            .map(|r| RebuildRequest {
                position: r.get(0),
                kind: r.get(1),
                loser: r.get(2),
                winner: r.get(3),
                entity_type: r.get(4),
                entity_id: r.get(5),
                timestamp: r.get(6),
            })
            .collect())
    }

    // ---- working state ------------------------------------------------------------------

    /// Loads a key's working state: every slot, or only the slots a time rule may fire for
    /// before `due_before` together with those of the given entities.
    pub async fn load_working_state(
        &self,
        key: &str,
        only: Option<(&str, &std::collections::BTreeSet<(String, String)>)>,
    ) -> Result<BTreeMap<(String, String), Slot>> {
        let op = "Loading working state";
        let columns = ["entity_type", "entity_id", "slot"];
        let base =
            "SELECT entity_type, entity_id, slot FROM {t:working_state} WHERE state_key = $1";
        let rows = match only {
            None => {
                self.fetch_as_json(base, &columns, Some(key.to_string()), op)
                    .await?
            }
            Some((due_before, entities)) => {
                // A range of one partial index and the other partial index (with `IS NULL
                // OR <` in one condition SQLite walks every entry of the key: 100 000
                // entities, 20 ms). Each branch names its index's condition, which is how
                // SQLite knows the index holds every row the branch wants.
                let due = format!(
                    "{base} AND next_due < '{}' AND next_due < 'NEVER' UNION ALL {base} AND next_due IS NULL",
                    due_before.replace('\'', "")
                );
                let mut rows = self
                    .fetch_as_json(&due, &columns, Some(key.to_string()), op)
                    .await?;
                // Each entity looked up by the whole primary key (an `IN` list of ids could
                // use only the key's first column).
                let values: Vec<Vec<&str>> = entities
                    .iter()
                    .map(|(ty, id)| vec![key, ty.as_str(), id.as_str()])
                    .collect();
                let by = ["state_key", "entity_type", "entity_id"];
                rows.extend(
                    self.rows_matching("working_state", &columns, &by, &values)
                        .await?,
                );
                rows
            }
        };
        let mut out = BTreeMap::new();
        for mut r in rows {
            let slot = r.pop().unwrap_or_default();
            let json: serde_json::Value = serde_json::from_str(&slot)
                .map_err(|e| Error::Storage(format!("{op} failed: {e}")))?;
            let id = r.pop().unwrap_or_default();
            out.insert((r.pop().unwrap_or_default(), id), persist::from_json(&json));
        }
        Ok(out)
    }

    /// Writes the given slots (and deletes the keys whose slot is `None`) in one transaction;
    /// with `replace_all`, the key's previous working state is dropped first.
    pub async fn save_working_state(
        &self,
        key: &str,
        slots: &BTreeMap<(String, String), Option<Slot>>,
        replace_all: bool,
        next_due: &dyn Fn(&(String, String), &Slot) -> String,
    ) -> Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| db("Saving working state", e))?;
        if replace_all {
            q(&self.sql("DELETE FROM {t:working_state} WHERE state_key = $1"))
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(|e| db("Saving working state", e))?;
        }
        let op = "Saving working state";
        let delete = self.sql(
            "DELETE FROM {t:working_state} WHERE state_key = $1 AND entity_type = $2 AND entity_id = $3",
        );
        if !replace_all {
            for ((ty, id), _) in slots.iter().filter(|(_, slot)| slot.is_none()) {
                q(&delete)
                    .bind(key)
                    .bind(ty)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db(op, e))?;
            }
        }
        let upserts = slots.iter().filter_map(|(entity, slot)| {
            let slot = slot.as_ref()?;
            Some(vec![
                key.to_string(),
                entity.0.clone(),
                entity.1.clone(),
                persist::to_text(slot),
                next_due(entity, slot),
            ])
        });
        let head = self.sql(
            "INSERT INTO {t:working_state} (state_key, entity_type, entity_id, slot, next_due)",
        );
        let conflict =
            "ON CONFLICT (state_key, entity_type, entity_id) DO UPDATE SET slot = excluded.slot, next_due = excluded.next_due";
        insert_many(&mut tx, self.dialect, &head, conflict, upserts, op).await?;
        tracing::debug!("working state rows written");
        tx.commit()
            .await
            .map_err(|e| db("Saving working state", e))?;
        Ok(())
    }

    // ---- leases -------------------------------------------------------------------------

    /// Takes a lease, or fails at once naming its holder (PIPELINE.md §1).
    pub async fn take_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<()> {
        let now = Utc::now();
        let expires = now.timestamp() + ttl.as_secs() as i64;
        let row = q(&self.sql(
            "INSERT INTO {t:leases} (name, holder, since, expires_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, since = excluded.since,
                expires_at = excluded.expires_at
             WHERE {t:leases}.expires_at < $5 OR {t:leases}.holder = excluded.holder
             RETURNING holder",
        ))
        .bind(name)
        .bind(holder)
        .bind(timestamp_text(&now))
        .bind(expires)
        .bind(now.timestamp())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db("Taking a lease", e))?;
        if row.is_some() {
            return Ok(());
        }
        let held = q(&self.sql("SELECT holder, since FROM {t:leases} WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db("Taking a lease", e))?;
        let (who, since): (String, String) = held
            .map_or((String::from("unknown"), String::new()), |r| {
                (r.get(0), r.get(1))
            });
        // A holder on this host whose process is gone died without releasing: its lease is
        // taken over at once instead of after it expires.
        if holder_is_dead(&who) {
            let taken = q(&self.sql(
                "UPDATE {t:leases} SET holder = $1, since = $2, expires_at = $3 WHERE name = $4 AND holder = $5",
            ))
            .bind(holder)
            .bind(timestamp_text(&now))
            .bind(expires)
            .bind(name)
            .bind(&who)
            .execute(&self.pool)
            .await
            .map_err(|e| db("Taking a lease", e))?;
            if taken.rows_affected() == 1 {
                return Ok(());
            }
        }
        Err(Error::Storage(format!(
            "Lease '{name}' is held by {who} since {since}"
        )))
    }

    /// Extends a lease this holder has.
    pub async fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<()> {
        let expires = Utc::now().timestamp() + ttl.as_secs() as i64;
        q(&self.sql("UPDATE {t:leases} SET expires_at = $1 WHERE name = $2 AND holder = $3"))
            .bind(expires)
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(|e| db("Renewing a lease", e))?;
        Ok(())
    }

    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        q(&self.sql("DELETE FROM {t:leases} WHERE name = $1 AND holder = $2"))
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(|e| db("Releasing a lease", e))?;
        Ok(())
    }

    // ---- job runs -----------------------------------------------------------------------

    /// The Delta version of `table` last exported to `target`.
    pub async fn export_version(&self, target: &str, table: &str) -> Result<Option<i64>> {
        let row = q(&self
            .sql("SELECT delta_version FROM {t:exports} WHERE target = $1 AND table_name = $2"))
        .bind(target.to_string())
        .bind(table.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db("Reading the export log", e))?;
        Ok(row.map(|r| r.get::<i64, _>(0)))
    }

    pub async fn set_export_version(&self, target: &str, table: &str, version: i64) -> Result<()> {
        q(&self.sql(
            "INSERT INTO {t:exports} (target, table_name, delta_version, exported_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (target, table_name)
             DO UPDATE SET delta_version = excluded.delta_version, exported_at = excluded.exported_at",
        ))
        .bind(target.to_string())
        .bind(table.to_string())
        .bind(version)
        .bind(now_text())
        .execute(&self.pool)
        .await
        .map_err(|e| db("Writing the export log", e))?;
        Ok(())
    }

    /// Forgets every export to `target` (the next export there is a full one).
    pub async fn clear_exports(&self, target: &str) -> Result<()> {
        q(&self.sql("DELETE FROM {t:exports} WHERE target = $1"))
            .bind(target.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| db("Writing the export log", e))?;
        Ok(())
    }

    // ---- erase ------------------------------------------------------------------------------

    /// The keys of every build state (every version, every shard).
    pub async fn build_state_keys(&self) -> Result<Vec<String>> {
        let rows = q(&self.sql("SELECT key FROM {t:build_state} ORDER BY key"))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db("Reading build states", e))?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    /// The stored plan of an unfinished erase of `id`.
    pub async fn erasure(&self, id: &str) -> Result<Option<String>> {
        let row = q(&self.sql("SELECT plan FROM {t:erasures} WHERE entity_id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db("Reading the erase plan", e))?;
        Ok(row.map(|r| r.get::<String, _>(0)))
    }

    pub async fn put_erasure(&self, id: &str, plan: &str) -> Result<()> {
        q(&self.sql(
            "INSERT INTO {t:erasures} (entity_id, plan) VALUES ($1, $2)
             ON CONFLICT (entity_id) DO UPDATE SET plan = excluded.plan",
        ))
        .bind(id.to_string())
        .bind(plan.to_string())
        .execute(&self.pool)
        .await
        .map_err(|e| db("Writing the erase plan", e))?;
        Ok(())
    }

    /// Deletes every catalog record of the entities `members` (identity mappings, entity
    /// records, merge_log rows on either side, rebuild requests naming them, working state of
    /// every version and shard), in one transaction; rewrites the
    /// run log's result texts with `rewrite`. Returns the merge_log rows deleted.
    pub async fn erase_entities(
        &self,
        members: &[String],
        rewrite: &dyn Fn(&str) -> Option<String>,
    ) -> Result<u64> {
        let op = "Erasing from the catalog";
        let ids: Vec<&str> = members.iter().map(String::as_str).collect();
        let list = crate::history_table::sql_list(&ids);
        let mut tx = self.pool.begin().await.map_err(|e| db(op, e))?;
        if self.dialect == Dialect::Sqlite {
            q("PRAGMA secure_delete = ON")
                .execute(&mut *tx)
                .await
                .map_err(|e| db(op, e))?;
        }
        let merge_log = q(&self.sql(&format!(
            "DELETE FROM {{t:merge_log}} WHERE from_entity_id IN ({list}) OR into_entity_id IN ({list})"
        )))
        .execute(&mut *tx)
        .await
        .map_err(|e| db(op, e))?
        .rows_affected();
        for sql in [
            format!("DELETE FROM {{t:identity}} WHERE entity_id IN ({list})"),
            format!("DELETE FROM {{t:entities}} WHERE entity_id IN ({list})"),
            // Requests keep their positions (builds count applied requests by position); only
            // what names the members goes.
            format!(
                "UPDATE {{t:rebuild_requests}} SET kind = '{ERASED}', loser = NULL, winner = NULL, entity_type = NULL, entity_id = NULL, timestamp = NULL
                 WHERE loser IN ({list}) OR winner IN ({list}) OR entity_id IN ({list})"
            ),
            format!("DELETE FROM {{t:working_state}} WHERE entity_id IN ({list})"),
        ] {
            q(&self.sql(&sql)).execute(&mut *tx).await.map_err(|e| db(op, e))?;
        }
        let runs = q(&self.sql("SELECT id, result FROM {t:job_runs} WHERE result IS NOT NULL"))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db(op, e))?;
        for r in &runs {
            let (id, text): (String, String) = (r.get(0), r.get(1));
            if let Some(new) = rewrite(&text) {
                q(&self.sql("UPDATE {t:job_runs} SET result = $1 WHERE id = $2"))
                    .bind(new)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db(op, e))?;
            }
        }
        tx.commit().await.map_err(|e| db(op, e))?;
        Ok(merge_log)
    }

    /// Forgets a finished erase's plan.
    pub async fn drop_erasure(&self, root: &str) -> Result<()> {
        q(&self.sql("DELETE FROM {t:erasures} WHERE entity_id = $1"))
            .bind(root.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| db("Removing the erase plan", e))?;
        Ok(())
    }

    /// Makes deletions physical (PIPELINE.md §12.1 erasure guarantee): SQLite rebuilds the
    /// file and truncates its WAL; Postgres rewrites the catalog tables (and `extra`, already
    /// qualified) with VACUUM FULL.
    pub async fn reclaim(&self, extra: &[String]) -> Result<()> {
        let op = "Reclaiming deleted space";
        match self.dialect {
            Dialect::Sqlite => {
                for sql in [
                    "PRAGMA secure_delete = ON",
                    "VACUUM",
                    "PRAGMA wal_checkpoint(TRUNCATE)",
                ] {
                    q(sql).execute(&self.pool).await.map_err(|e| db(op, e))?;
                }
            }
            Dialect::Postgres => {
                let mut tables: Vec<String> = [
                    "identity",
                    "entities",
                    "merge_log",
                    "rebuild_requests",
                    "working_state",
                    "job_runs",
                    "erasures",
                ]
                .iter()
                .map(|t| self.t(t))
                .collect();
                tables.extend(extra.iter().cloned());
                for t in tables {
                    q(&format!("VACUUM FULL {t}"))
                        .execute(&self.pool)
                        .await
                        .map_err(|e| db(op, e))?;
                }
            }
        }
        Ok(())
    }

    /// Every successful run of `job`, with its result text, oldest first.
    pub async fn run_results(&self, job: &str) -> Result<Vec<String>> {
        let rows = q(&self.sql(
            "SELECT result FROM {t:job_runs} WHERE job = $1 AND status = 'succeeded' AND result IS NOT NULL ORDER BY started_at",
        ))
        .bind(job.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db("Reading the run log", e))?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    /// Every (target, table) in the export log.
    pub async fn export_tables(&self) -> Result<Vec<(String, String)>> {
        let rows =
            q(&self.sql("SELECT target, table_name FROM {t:exports} ORDER BY target, table_name"))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db("Reading the export log", e))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
            .collect())
    }

    pub async fn record_run(
        &self,
        id: &str,
        job: &str,
        started: &str,
        status: &str,
        result: &str,
    ) -> Result<()> {
        q(&self.sql(
            "INSERT INTO {t:job_runs} (id, job, started_at, finished_at, status, result) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET finished_at = excluded.finished_at, status = excluded.status,
                result = excluded.result",
        ))
        .bind(id)
        .bind(job)
        .bind(started)
        .bind(now_text())
        .bind(status)
        .bind(result)
        .execute(&self.pool)
        .await
        .map_err(|e| db("Recording a job run", e))?;
        Ok(())
    }

    /// The latest `limit` runs of the log, newest first.
    pub async fn recent_runs(&self, limit: u32) -> Result<Vec<RunRecord>> {
        let rows = q(&self.sql(&format!(
            "SELECT id, job, started_at, finished_at, status, result FROM {{t:job_runs}}
             ORDER BY finished_at DESC, started_at DESC, id LIMIT {limit}"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db("Reading the run log", e))?;
        Ok(rows
            .iter()
            .map(|r| RunRecord {
                id: r.get(0),
                job: r.get(1),
                started_at: r.get(2),
                finished_at: r.get(3),
                status: r.get(4),
                result: r
                    .get::<Option<String>, _>(5)
                    .and_then(|text| serde_json::from_str(&text).ok()),
            })
            .collect())
    }
}

/// One entry of the run log: a job run that succeeded (with its result JSON) or failed (with
/// `{"error": "Kind: message"}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunRecord {
    pub id: String,
    pub job: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: String,
    pub result: Option<serde_json::Value>,
}

fn version_row(r: &AnyRow) -> VersionRow {
    VersionRow {
        version: r.get(0),
        definitions: r.get(1),
        hashes: Hashes {
            definition_hash: r.get(2),
            source_hash: r.get(3),
            identity_hash: r.get(4),
        },
        seed: Hashes {
            definition_hash: r.get(5),
            source_hash: r.get(6),
            identity_hash: r.get(7),
        },
        active: r.get::<i64, _>(8) != 0,
        created_at: r.get(9),
    }
}

fn build_state_row(r: &AnyRow) -> BuildState {
    BuildState {
        key: r.get(0),
        version: r.get(1),
        cursor: r.get(2),
        watermark: r.get(3),
        hashes: Hashes {
            definition_hash: r.get(4),
            source_hash: r.get(5),
            identity_hash: r.get(6),
        },
        salt_fingerprint: r.get(7),
        requests_applied: r.get(8),
        dirty: r.get::<i64, _>(9) != 0,
        last_build_time: r.get(10),
        last_build_mode: r.get(11),
    }
}

/// Whether a lease holder (`job@host:pid`) is a process of this host that no longer runs.
fn holder_is_dead(holder: &str) -> bool {
    let Some((_, place)) = holder.rsplit_once('@') else {
        return false;
    };
    let Some((host, pid)) = place.rsplit_once(':') else {
        return false;
    };
    let this_host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    match pid.parse::<u32>() {
        Ok(pid) if host == this_host => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        _ => false,
    }
}

pub fn parse_instant(text: &str) -> Result<Instant> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::Storage(format!("bad timestamp '{text}' in the catalog: {e}")))
}

/// `sqlite://path` with the file (and its folder) created on first use.
fn sqlite_url(url: &str) -> Result<String> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(url.to_string());
    }
    if let Some(dir) = std::path::Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Config(format!("cannot create the folder of '{path}': {e}")))?;
    }
    Ok(format!("sqlite://{path}?mode=rwc"))
}
