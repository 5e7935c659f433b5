//! A real S3-compatible server for the tests, spoken to over HTTP: moto's server, installed
//! from PyPI into a virtual environment the suite manages (`~/.cache/defacto-test-venv`), one
//! server per test process, stopped when that process ends. moto honours conditional writes
//! (`If-None-Match: *`), which Delta commits on S3 rely on.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const MOTO: &str = "moto[server]==5.2.5";

pub struct S3 {
    pub endpoint: String,
}

/// The server of this test process, started on first use.
pub fn server() -> &'static S3 {
    static SERVER: OnceLock<S3> = OnceLock::new();
    SERVER.get_or_init(start)
}

fn venv() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    PathBuf::from(home).join(".cache/defacto-test-venv")
}

/// Creates the virtual environment and installs moto once per machine; a lock directory
/// keeps concurrent test processes from installing at the same time.
fn ensure_moto() -> PathBuf {
    let venv = venv();
    let bin = venv.join("bin/moto_server");
    if bin.exists() {
        return bin;
    }
    let lock = venv.with_extension("lock");
    let deadline = Instant::now() + Duration::from_secs(600);
    while std::fs::create_dir(&lock).is_err() {
        assert!(
            Instant::now() < deadline,
            "waited too long for {}",
            lock.display()
        );
        std::thread::sleep(Duration::from_millis(500));
        if bin.exists() {
            return bin;
        }
    }
    let result = (|| {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?;
        assert!(status.success(), "python3 -m venv failed");
        let status = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", MOTO])
            .status()?;
        assert!(status.success(), "pip install {MOTO} failed");
        std::io::Result::Ok(())
    })();
    let _ = std::fs::remove_dir(&lock);
    result.expect("installing the S3 test server");
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> S3 {
    let bin = ensure_moto();
    let port = free_port();
    // The server lives as long as this test process: a watcher stops it when we are gone.
    let script = format!(
        "{} -H 127.0.0.1 -p {port} >/dev/null 2>&1 & server=$!; while kill -0 {} 2>/dev/null; do sleep 1; done; kill $server",
        bin.display(),
        std::process::id()
    );
    // The watcher outlives this function on purpose: it ends with the test process.
    #[allow(clippy::zombie_processes)]
    let _watcher = Command::new("sh")
        .args(["-c", &script])
        .spawn()
        .expect("start moto_server");
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "moto_server did not start on {endpoint}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    S3 { endpoint }
}

impl S3 {
    /// Creates a bucket (moto accepts any credentials).
    pub fn bucket(&self, name: &str) {
        let out = Command::new(venv().join("bin/python"))
            .args([
                "-c",
                &format!(
                    "import boto3; boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='{name}')",
                    self.endpoint
                ),
            ])
            .output()
            .expect("create bucket");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The standard AWS variables the jobs read (nothing S3-specific is configured otherwise).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}
