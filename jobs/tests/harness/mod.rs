//! A tiny harness for driving the real `defacto` binary in a temp folder.

pub mod fixture;
pub mod s3;

/// A scenario on the embedded default (SQLite) and on the real Postgres: `on_both!(name)`
/// turns `fn name(backend: Backend)` into one test per backend.
#[allow(unused_macros)]
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(super::Backend::Sqlite)
            }
            #[test]
            fn postgres() {
                super::$name(super::Backend::Postgres)
            }
        }
    };
}

/// A scenario three ways: local lake + SQLite, local lake + Postgres, S3 lake + Postgres.
#[allow(unused_macros)]
macro_rules! on_all {
    ($name:ident) => {
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(super::Backend::Sqlite)
            }
            #[test]
            fn postgres() {
                super::$name(super::Backend::Postgres)
            }
            #[test]
            fn s3() {
                super::$name(super::Backend::S3)
            }
        }
    };
}

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;

/// A project folder in a temp directory, and the environment its commands run with.
pub struct Dir {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

/// The catalog database the Postgres variants of tests use (CI provides it).
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Which catalog a test runs against.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: SQLite file in the project folder.
    Sqlite,
    /// The real Postgres on 127.0.0.1:5432, each test in a namespace of its own.
    Postgres,
    /// An S3 lake on a real S3-compatible server over HTTP, with the Postgres catalog.
    S3,
}

impl Dir {
    /// An empty temp folder.
    #[allow(dead_code)]
    pub fn empty() -> Dir {
        Dir {
            dir: tempfile::tempdir().expect("tempdir"),
            env: Vec::new(),
        }
    }

    /// Runs this folder's commands against `backend` (a fresh namespace for Postgres).
    #[allow(dead_code)]
    pub fn on(mut self, backend: Backend) -> Dir {
        if matches!(backend, Backend::Postgres | Backend::S3) {
            let ns = format!(
                "t{}_{}",
                std::process::id(),
                self.path()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .replace(['.', '-'], "_")
                    .to_lowercase()
            );
            self.env
                .push(("DEFACTO_DATABASE".into(), POSTGRES_URL.into()));
            self.env.push(("DEFACTO_NAMESPACE".into(), ns.clone()));
            if backend == Backend::S3 {
                let server = s3::server();
                let bucket = ns.replace('_', "-");
                server.bucket(&bucket);
                self.env.extend(server.env());
                self.env
                    .push(("DEFACTO_LAKE".into(), format!("s3://{bucket}/lake")));
            }
        }
        self
    }

    /// The environment variables every command of this folder gets.
    #[allow(dead_code)]
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// A copy of one of core's test fixtures (`cust`, `min`).
    pub fn from_fixture(name: &str) -> Dir {
        let dir = Dir::empty();
        fixture::copy_dir(&fixture::core_fixtures().join(name), dir.path());
        dir
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    #[allow(dead_code)]
    pub fn write(&self, rel: &str, text: &str) {
        let path = self.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// Replaces one exact piece of text in a file; the piece must be there.
    #[allow(dead_code)]
    pub fn edit(&self, rel: &str, from: &str, to: &str) {
        let text = fs::read_to_string(self.path().join(rel)).unwrap();
        assert!(text.contains(from), "{rel} does not contain {from:?}");
        self.write(rel, &text.replacen(from, to, 1));
    }
}

/// The binary run with `--config <dir>` unless a test passes its own.
pub struct TestCommand {
    cmd: Command,
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    #[track_caller]
    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code, code,
            "exit status {} (expected {code})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
    }
}

impl TestCommand {
    pub fn new(dir: &Dir) -> TestCommand {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_defacto"));
        cmd.current_dir(dir.path());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DEFACTO_") {
                cmd.env_remove(key);
            }
        }
        for (k, v) in &dir.env {
            cmd.env(k, v);
        }
        TestCommand { cmd }
    }

    #[allow(dead_code)]
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    #[allow(dead_code)]
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Starts the command without waiting (output captured).
    #[allow(dead_code)]
    pub fn spawn(mut self) -> std::process::Child {
        self.cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn defacto")
    }

    pub fn run(mut self) -> Output {
        let out = self.cmd.output().expect("run defacto");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs a command that must succeed and returns its result JSON.
#[allow(dead_code)]
pub fn run(dir: &Dir, args: &[&str]) -> serde_json::Value {
    let out = TestCommand::new(dir).args(args).run();
    out.assert_code(0);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// Writes `records` (JSON lines) to the file `name` in the folder and ingests it as one call
/// of the `app` source; returns the ingest result.
#[allow(dead_code)]
pub fn ingest_app(dir: &Dir, name: &str, records: &[String]) -> serde_json::Value {
    dir.write(name, &(records.join("\n") + "\n"));
    run(dir, &["ingest", "--source", "app", name])
}

/// A raw record of the `cust` fixture's `app` source: its type, `ts` as `2024-<ts>:00Z`, and
/// the fields of `extra`.
#[allow(dead_code)]
pub fn app(ty: &str, ts: &str, extra: serde_json::Value) -> String {
    let mut raw = serde_json::json!({"type": ty, "ts": format!("2024-{ts}:00Z")});
    raw.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    raw.to_string()
}

/// S1 of CONTRACTS.md: alice signs up (as `Alice@X.com`), upgrades to pro at 49 and logs in.
#[allow(dead_code)]
pub fn s1() -> Vec<String> {
    vec![
        app(
            "signup",
            "01-01T10:00",
            serde_json::json!({"email": "Alice@X.com"}),
        ),
        app(
            "upgrade",
            "01-02T10:00",
            serde_json::json!({"email": "alice@x.com", "plan": "pro", "mrr": "49"}),
        ),
        app(
            "login",
            "01-03T10:00",
            serde_json::json!({"email": "alice@x.com", "n": 1}),
        ),
    ]
}
