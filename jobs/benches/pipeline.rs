//! The pipeline benchmark: generates N app events for the showcase definitions (signups, then
//! logins and profile updates of ~N/10 customers), and times the real `defacto` binary on the
//! embedded default (local lake + SQLite): ingest, normalize, a full build, then an
//! incremental build after 1 % more events (builds with `--workers` = the machine's cores);
//! then the exports of the resulting history
//! (Parquet, the SQLite warehouse, and — with a Postgres catalog, when one answers at
//! `DEFACTO_BENCH_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test` — the Postgres
//! warehouse) and `table --as-of`. Prints events/s or rows/s and peak RSS per job; it never
//! fails on time.
//!
//! `cargo bench -p defacto-jobs --bench pipeline` (N from `DEFACTO_BENCH_EVENTS`, default
//! 1 000 000). With `DEFACTO_BENCH_KEEP=1` the working folder (definitions, generated events,
//! lake and catalog) is kept and its path printed, to profile single jobs on it;
//! `DEFACTO_BENCH_EXPORTS=0` stops after the pipeline figures.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Writes `n` showcase app events, starting at event number `start`, to `path`.
fn generate(path: &Path, start: usize, n: usize, customers: usize) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state: u64 = 0x2545_F491_4F6C_DD1D ^ start as u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let base = 1_704_067_200i64; // 2024-01-01
    for i in start..start + n {
        let secs = base + (i as i64) * 20 + (next() % 10) as i64;
        let ts = chrono::DateTime::from_timestamp(secs, 0)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ");
        let (c, kind) = if i < customers {
            (i, 0)
        } else {
            ((next() as usize) % customers, 1 + next() % 10)
        };
        let user = 100_000 + c;
        let line = match kind {
            0 => format!(
                r#"{{"event":"signed_up","occurred_at":"{ts}","message_id":"m{i}","userId":{user},"traits":{{"email":"user{c}@bench.example"}},"context":{{"channel":"ads"}}}}"#
            ),
            1 => format!(
                r#"{{"event":"profile_updated","occurred_at":"{ts}","message_id":"m{i}","userId":{user},"traits":{{"email":"user{c}@bench.example","company":"co{}"}}}}"#,
                c % 97
            ),
            _ => format!(
                r#"{{"event":"logged_in","occurred_at":"{ts}","message_id":"m{i}","userId":{user},"context":{{"device":"web"}}}}"#
            ),
        };
        writeln!(out, "{line}").unwrap();
    }
}

/// Runs a job, sampling the child's resident memory; returns (duration, peak RSS in MiB).
fn job(dir: &Path, args: &[&str]) -> (Duration, f64) {
    job_with(dir, args, &[])
}

/// `job` with extra environment variables.
fn job_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Duration, f64) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_defacto"))
        .current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let status_file = PathBuf::from(format!("/proc/{}/status", child.id()));
    let mut peak_kib = 0u64;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            for line in text.lines().filter(|l| l.starts_with("VmHWM:")) {
                if let Some(v) = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()) {
                    peak_kib = peak_kib.max(v);
                }
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "defacto {args:?} failed");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (started.elapsed(), peak_kib as f64 / 1024.0)
}

fn main() {
    let n: usize = std::env::var("DEFACTO_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let customers = (n / 10).max(1);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/showcase"),
        dir,
    );
    std::fs::remove_dir_all(dir.join("data")).unwrap();
    let events = dir.join("events.jsonl");
    let more = dir.join("more.jsonl");
    generate(&events, 0, n, customers);
    generate(&more, n, n / 100, customers);
    let as_of = "--as-of=2025-01-01T00:00:00Z";
    // Builds interpret on as many workers as the machine has cores, as one would run them.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = format!("--workers={cores}");
    let report = |name: &str, count: usize, (d, rss): (Duration, f64)| {
        println!(
            "{name:<22} {count:>10} events {:>9.2} s {:>12.0} events/s  peak RSS {:>7.0} MiB",
            d.as_secs_f64(),
            count as f64 / d.as_secs_f64(),
            rss
        );
        d
    };
    println!(
        "pipeline benchmark: {n} events, {customers} customers, local lake + SQLite, builds with {workers}"
    );
    report(
        "ingest",
        n,
        job(
            dir,
            &["ingest", "--source", "app", events.to_str().unwrap()],
        ),
    );
    let normalize = report("normalize", n, job(dir, &["normalize"]));
    let build = report("build (full)", n, job(dir, &["build", as_of, &workers]));
    let total = normalize + build;
    println!(
        "{:<22} {n:>10} events {:>9.2} s {:>12.0} events/s",
        "normalize + build",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64()
    );
    report(
        "ingest 1 %",
        n / 100,
        job(dir, &["ingest", "--source", "app", more.to_str().unwrap()]),
    );
    let inc_norm = report("normalize 1 %", n / 100, job(dir, &["normalize"]));
    let inc = report(
        "build (incremental)",
        n / 100,
        job(dir, &["build", as_of, &workers]),
    );
    println!(
        "incremental normalize + build after 1 % new events: {:.1} % of the full normalize + build",
        100.0 * (inc_norm + inc).as_secs_f64() / total.as_secs_f64()
    );

    // The pipeline figures alone (a 10 M run, say): DEFACTO_BENCH_EXPORTS=0.
    if std::env::var("DEFACTO_BENCH_EXPORTS").as_deref() != Ok("0") {
        exports(dir, as_of);
    }
    if std::env::var_os("DEFACTO_BENCH_KEEP").is_some() {
        println!("working folder kept: {}", work.keep().display());
    }
}

/// The number of rows of every history table (from the export's own result JSON).
fn history_rows(dir: &Path) -> usize {
    let out = Command::new(env!("CARGO_BIN_EXE_defacto"))
        .current_dir(dir)
        .args([
            "query",
            "SELECT (SELECT count(*) FROM customer_history) + (SELECT count(*) FROM subscription_history) + (SELECT count(*) FROM order_history) AS n",
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

fn exports(dir: &Path, as_of: &str) {
    let rows = history_rows(dir);
    let report = |name: &str, (d, rss): (Duration, f64)| {
        println!(
            "{name:<22} {rows:>10} rows   {:>9.2} s {:>12.0} rows/s    peak RSS {:>7.0} MiB",
            d.as_secs_f64(),
            rows as f64 / d.as_secs_f64(),
            rss
        );
    };
    let out = dir.join("export");
    let out = out.to_str().unwrap();
    report(
        "export parquet",
        job(
            dir,
            &["export", "--format", "parquet", "--history", "--out", out],
        ),
    );
    report(
        "export warehouse",
        job(dir, &["export", "--format", "warehouse"]),
    );
    let (d, _) = job(
        dir,
        &[
            "table",
            "customer",
            "--as-of",
            "2024-06-01T00:00:00Z",
            "--format",
            "csv",
        ],
    );
    println!(
        "table --as-of (customer, {rows} history rows in all): {:.2} s",
        d.as_secs_f64()
    );

    // The Postgres warehouse needs a Postgres catalog: the same events again, into a fresh
    // namespace.
    let url = std::env::var("DEFACTO_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pg = dir.join("pg");
    copy_dir(&dir.join("entities"), &pg.join("entities"));
    copy_dir(&dir.join("sources"), &pg.join("sources"));
    copy_dir(&dir.join("schemas"), &pg.join("schemas"));
    let namespace = format!("bench{}", std::process::id());
    let env = [
        ("DEFACTO_DATABASE", url.as_str()),
        ("DEFACTO_NAMESPACE", namespace.as_str()),
    ];
    let events = dir.join("events.jsonl");
    let ready = Command::new(env!("CARGO_BIN_EXE_defacto"))
        .current_dir(&pg)
        .envs(env)
        .args(["ingest", "--source", "app", events.to_str().unwrap()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        println!("export warehouse (Postgres): skipped, no Postgres at {url}");
        return;
    }
    job_with(&pg, &["normalize"], &env);
    job_with(&pg, &["build", as_of], &env);
    report(
        "export warehouse (pg)",
        job_with(&pg, &["export", "--format", "warehouse"], &env),
    );
}
