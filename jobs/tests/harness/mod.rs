//! A tiny harness for driving the real `defacto` binary in a temp folder.

pub mod fixture;

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;

/// A project folder in a temp directory.
pub struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    /// An empty temp folder.
    #[allow(dead_code)]
    pub fn empty() -> Dir {
        Dir {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A copy of one of core's test fixtures (`cust`, `min`).
    pub fn from_fixture(name: &str) -> Dir {
        let dir = Dir {
            dir: tempfile::tempdir().expect("tempdir"),
        };
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
        TestCommand { cmd }
    }

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

    pub fn run(mut self) -> Output {
        let out = self.cmd.output().expect("run defacto");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
