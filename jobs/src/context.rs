//! What every job starts from: the definitions of the config folder (validated, with their
//! content-derived version registered in the catalog), the lake, the catalog, the job's
//! `as_of`, and the leases it holds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use defacto_core::definitions::{Definitions, Hashes, NormalizedDocument};
use defacto_core::value::Instant;

use crate::catalog::{Catalog, VersionRow};
use crate::cli::Global;
use crate::error::{Error, Result};
use crate::lake::Lake;

/// Where dead letters go (`--dead-letter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterSink {
    /// The Delta table `ledger/dead_letters`.
    Delta,
    /// JSON lines appended to a file, one `EventFailure` per line (RESULTS.md §1).
    File(PathBuf),
}

impl DeadLetterSink {
    pub fn parse(text: &str) -> Result<DeadLetterSink> {
        match text.split_once(':') {
            _ if text == "delta" => Ok(DeadLetterSink::Delta),
            Some(("file", path)) if !path.is_empty() => {
                Ok(DeadLetterSink::File(PathBuf::from(path)))
            }
            _ => Err(Error::Config(format!(
                "unknown dead-letter sink '{text}': use 'delta' or 'file:PATH'"
            ))),
        }
    }
}

/// A job's view of the world.
pub struct Context {
    pub config: PathBuf,
    pub defs: Arc<Definitions>,
    pub document: NormalizedDocument,
    pub version: String,
    pub hashes: Hashes,
    pub lake: Lake,
    pub catalog: Catalog,
    pub as_of: Instant,
    pub dead_letter: DeadLetterSink,
    /// The deployment's identity salt (`DEFACTO_IDENTITY_SALT`, PIPELINE.md §5.3): a secret,
    /// so read from the environment only (no flag a process list would show) and never
    /// stored — the catalog keeps its fingerprint.
    pub identity_salt: Option<String>,
    /// The run's id in the run log, and when it started.
    run_id: String,
    started: String,
    job: String,
    result_file: Option<PathBuf>,
    /// Who this job is, for leases and the run log: `job@host:pid`.
    pub holder: String,
    leases: std::sync::Mutex<Vec<String>>,
}

/// How long a lease lives without renewal; a job that dies loses its leases after this.
pub const LEASE_TTL: Duration = Duration::from_secs(120);

impl Context {
    /// Loads the definitions (every error blocks), connects to the lake and the catalog and
    /// registers the folder's version when it is new.
    pub async fn open(global: &Global, job: &str, as_of: Option<Instant>) -> Result<Context> {
        let config = global.config_path()?.to_path_buf();
        let dead_letter = DeadLetterSink::parse(&global.dead_letter)?;
        let defs = Definitions::load(&config)?;
        let document = NormalizedDocument::of(&defs);
        let version = document.version_name();
        let hashes = document.hashes();
        let lake = Lake::new(&global.lake.clone().unwrap_or_else(|| default_lake(&config)))?;
        let database = global
            .database
            .clone()
            .unwrap_or_else(|| default_database(&config));
        let catalog = Catalog::connect(&database, &global.namespace).await?;
        catalog
            .register_version(&version, &document.json().to_string(), &hashes)
            .await?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        Ok(Context {
            config,
            defs: Arc::new(defs),
            document,
            version,
            hashes,
            lake,
            catalog,
            as_of: as_of.unwrap_or_else(Utc::now),
            dead_letter,
            identity_salt: std::env::var("DEFACTO_IDENTITY_SALT")
                .ok()
                .filter(|s| !s.is_empty()),
            run_id: uuid::Uuid::new_v4().to_string(),
            started: crate::catalog::now_text(),
            job: job.to_string(),
            result_file: global.result_file.clone(),
            holder: format!("{job}@{host}:{}", std::process::id()),
            leases: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The fingerprint of the identity salt: what the catalog records and compares.
    pub fn salt_fingerprint(&self) -> String {
        defacto_core::identity::salt_fingerprint(self.identity_salt.as_deref())
    }

    /// A resolver over `store` with the version's identity fields and the deployment's salt.
    pub fn resolver<S: defacto_core::identity::IdentityStore>(
        &self,
        store: S,
    ) -> defacto_core::identity::Resolver<S> {
        defacto_core::identity::Resolver::new(
            defacto_core::identity::IdentityFields::from_definitions(&self.defs),
            self.identity_salt.as_deref(),
            store,
        )
    }

    /// Ends a run that takes leases: releases them and logs the outcome — a success with its
    /// result (also to `--result-file` and stdout, see `finish`), a failure with its error —
    /// then hands the outcome back.
    pub async fn conclude<T: serde::Serialize>(&self, outcome: Result<T>) -> Result<T> {
        self.conclude_logged(outcome, None::<&T>).await
    }

    /// `conclude`, with `logged` recorded in the run log instead of the result when given (an
    /// erase must not write the ids it erased there).
    pub async fn conclude_logged<T: serde::Serialize, L: serde::Serialize>(
        &self,
        outcome: Result<T>,
        logged: Option<&L>,
    ) -> Result<T> {
        let released = self.release_leases().await;
        match outcome {
            Ok(result) => {
                released?;
                let json = match logged {
                    Some(l) => serde_json::to_string(l),
                    None => serde_json::to_string(&result),
                }
                .expect("results serialize");
                self.report(&result, &json).await?;
                Ok(result)
            }
            Err(error) => {
                let json = serde_json::json!({ "error": error.to_string() }).to_string();
                // The job's own error is what the caller must see; a run log that cannot be
                // written is only reported.
                if let Err(log) = self
                    .catalog
                    .record_run(&self.run_id, &self.job, &self.started, "failed", &json)
                    .await
                {
                    tracing::warn!("the failed run could not be logged: {log}");
                }
                if let Err(lease) = released {
                    tracing::warn!("leases could not be released: {lease}");
                }
                Err(error)
            }
        }
    }

    /// Reports a completed run: its result JSON goes to the run log of the catalog, to
    /// `--result-file` when set, and to stdout.
    pub async fn finish<T: serde::Serialize>(&self, result: &T) -> Result<()> {
        let json = serde_json::to_string(result).expect("results serialize");
        self.report(result, &json).await
    }

    /// `logged` to the run log, `result` to `--result-file` and stdout.
    async fn report<T: serde::Serialize>(&self, result: &T, logged: &str) -> Result<()> {
        self.catalog
            .record_run(&self.run_id, &self.job, &self.started, "succeeded", logged)
            .await?;
        crate::output::write_result_file(self.result_file.as_deref(), result)?;
        crate::output::print(&crate::output::to_json(result))
    }

    /// The active version's row and definitions: what the read-only commands (`table`,
    /// `assert`, `timeline`) show, whatever the folder holds.
    pub async fn active_definitions(&self) -> Result<(VersionRow, Definitions)> {
        let row = self
            .catalog
            .active_version()
            .await?
            .ok_or_else(|| Error::Config("No active definition version".into()))?;
        let defs = crate::jobs::build::version_definitions(self, &row)?;
        Ok((row, defs))
    }

    /// The registered row of the folder's version.
    pub async fn version_row(&self) -> Result<VersionRow> {
        self.catalog
            .version(&self.version)
            .await?
            .ok_or_else(|| Error::NotFound(format!("version '{}' is not registered", self.version)))
    }

    /// Takes a lease for the rest of the job (released by `release_leases`).
    pub async fn lease(&self, name: &str) -> Result<()> {
        self.catalog
            .take_lease(name, &self.holder, LEASE_TTL)
            .await?;
        self.leases
            .lock()
            .expect("lease list")
            .push(name.to_string());
        Ok(())
    }

    /// Sends failures to the dead-letter sink, each with the sequence of its raw record when
    /// it has one.
    pub async fn dead_letters(
        &self,
        failures: &[(Option<i64>, defacto_core::results::EventFailure)],
    ) -> Result<()> {
        if failures.is_empty() {
            return Ok(());
        }
        match &self.dead_letter {
            DeadLetterSink::Delta => {
                let rows: Vec<_> = failures.iter().map(|(s, f)| (*s, f)).collect();
                let batch = crate::ledger::dead_letters_batch(&rows, Utc::now())?;
                self.lake
                    .append(crate::lake::tables::DEAD_LETTERS, vec![batch])
                    .await
            }
            DeadLetterSink::File(path) => {
                use std::io::Write;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                let mut text = String::new();
                for (_, f) in failures {
                    text.push_str(&serde_json::to_string(f).expect("failures serialize"));
                    text.push('\n');
                }
                file.write_all(text.as_bytes())?;
                Ok(())
            }
        }
    }

    /// Releases one lease this job holds (the others stay).
    pub async fn release_lease(&self, name: &str) -> Result<()> {
        self.leases
            .lock()
            .expect("lease list")
            .retain(|n| n != name);
        self.catalog.release_lease(name, &self.holder).await
    }

    /// Takes a lease, waiting for it (up to ten minutes) instead of failing when it is held:
    /// for short locks such as the sequence allocator's.
    pub async fn wait_for_lease(&self, name: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        loop {
            match self.lease(name).await {
                Err(Error::Storage(msg))
                    if msg.contains("is held by") && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    pub async fn release_leases(&self) -> Result<()> {
        let names: Vec<String> = std::mem::take(&mut *self.leases.lock().expect("lease list"));
        for name in names {
            self.catalog.release_lease(&name, &self.holder).await?;
        }
        Ok(())
    }

    /// Renews the leases this job holds; long jobs call it between stages.
    pub async fn renew_leases(&self) -> Result<()> {
        let names: Vec<String> = self.leases.lock().expect("lease list").clone();
        for name in names {
            self.catalog
                .renew_lease(&name, &self.holder, LEASE_TTL)
                .await?;
        }
        Ok(())
    }
}

pub fn default_lake(config: &Path) -> String {
    config.join(".defacto").join("lake").display().to_string()
}

pub fn default_database(config: &Path) -> String {
    format!(
        "sqlite://{}",
        config.join(".defacto").join("defacto.db").display()
    )
}

/// The global lease over the stores shared by all versions (PIPELINE.md §1).
pub const GLOBAL_LEASE: &str = "global";

/// The lease of one build-state key.
pub fn build_lease(key: &str) -> String {
    format!("build:{key}")
}
