//! Engine throughput: normalize, resolve and replay N generated events in memory, at one and
//! two workers, with peak memory. Prints figures; never fails on time.
//!
//! `DEFACTO_BENCH_EVENTS` sets N (default 1 000 000, ~100 000 customers);
//! `DEFACTO_BENCH_WORKERS` the pool sizes (default `1,2`; empty: normalize only);
//! `DEFACTO_BENCH_REPEAT` the FULL replays per pool size (default 3), all printed, the best
//! being the figure to compare. On a noisy machine, compare CPU-bound changes by instruction
//! count instead: `valgrind --tool=callgrind --toggle-collect='*Normalizer*normalize*'` (or
//! `'*build*run*'`, `'*resolve_step*'`) on the bench binary with a small N.

use std::path::Path;
use std::time::Instant as Clock;

use chrono::{Duration, TimeZone, Utc};
use defacto_core::definitions::Definitions;
use defacto_core::engine::{BuildOptions, Engine};
use defacto_core::normalize::Normalizer;
use serde_json::{json, Value as Json};

/// The allocator of the `defacto` binary (jobs/src/main.rs), so figures match the jobs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn defs() -> Definitions {
    Definitions::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cust"))
        .expect("CUST")
}

/// A deterministic mix of signups, upgrades, logins and cancels over `n / 10` customers.
fn generate(n: usize) -> Vec<Json> {
    let customers = (n / 10).max(1);
    let start = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let c = if i < customers {
            i
        } else {
            (next() as usize) % customers
        };
        let at = start + Duration::seconds((i as i64) * 7 + (next() % 5) as i64);
        let ts = at.to_rfc3339();
        let email = format!("user{c}@example.com");
        let raw = if i < customers {
            json!({"type": "signup", "ts": ts, "email": email})
        } else {
            match next() % 10 {
                0..=5 => json!({"type": "login", "ts": ts, "email": email, "n": i}),
                6..=8 => {
                    let plan = ["pro", "team", "free"][(next() % 3) as usize];
                    let mrr = (next() % 500) as i64;
                    json!({"type": "upgrade", "ts": ts, "email": email, "plan": plan, "mrr": mrr})
                }
                _ => json!({"type": "cancel", "ts": ts, "email": email}),
            }
        };
        out.push(raw);
    }
    out
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    // As the `defacto` binary (jobs/src/main.rs): no transparent huge pages, whose splitting
    // and re-zeroing under mimalloc's purges is kernel time, not engine time.
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: integer arguments; only sets a flag of this process's memory map.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
    // `cargo bench` passes `--bench`; any other argument filters nothing here.
    let n: usize = std::env::var("DEFACTO_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let defs = defs();
    let raws = generate(n);
    let as_of = Utc.with_ymd_and_hms(2024, 12, 31, 0, 0, 0).unwrap();

    // The jobs read raw events as text (ledger/raw): parsing it is part of their normalize.
    let texts: Vec<String> = raws.iter().map(|r| r.to_string()).collect();
    let t = Clock::now();
    let parsed = texts
        .iter()
        .filter(|t| serde_json::from_str::<Json>(t).is_ok())
        .count();
    let parse = t.elapsed();
    drop(texts);
    println!(
        "parse raw text: {n} events in {:.2?} = {:.0} events/s ({parsed} ok)",
        parse,
        n as f64 / parse.as_secs_f64()
    );

    let normalizer = Normalizer::new(&defs, as_of);
    let t = Clock::now();
    let mut ok = 0usize;
    for raw in &raws {
        ok += normalizer.normalize("app", raw).is_ok() as usize;
    }
    let normalize = t.elapsed();
    println!(
        "normalize: {n} events in {:.2?} = {:.0} events/s ({ok} ok)",
        normalize,
        n as f64 / normalize.as_secs_f64()
    );

    // DEFACTO_BENCH_WORKERS=1 (say) measures one pool size; DEFACTO_BENCH_REPEAT the number
    // of FULL replays whose best is reported (this VM's noise is larger than most changes
    // measured here).
    let pools: Vec<usize> = std::env::var("DEFACTO_BENCH_WORKERS")
        .ok()
        .map(|v| v.split(',').filter_map(|w| w.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2]);
    let repeat: usize = std::env::var("DEFACTO_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    for workers in pools {
        let mut engine = Engine::new(defs.clone()).with_workers(workers);
        let t = Clock::now();
        engine.ingest("app", &raws, as_of).unwrap();
        let ingest = t.elapsed();
        let t = Clock::now();
        let result = engine.build(BuildOptions {
            full: true,
            ..BuildOptions::at(as_of)
        });
        let build = t.elapsed();
        let rows: usize = engine.history.values().map(|h| h.rows.len()).sum();
        println!(
            "workers={workers}: ingest (normalize + dedup) {:.2?} = {:.0} events/s; resolve + FULL replay {:.2?} = {:.0} events/s; {} rows, {} entities, {} failures",
            ingest,
            n as f64 / ingest.as_secs_f64(),
            build,
            n as f64 / build.as_secs_f64(),
            rows,
            engine.slots.len(),
            result.events_failed
        );
        println!("  stage timings (ms): {:?}", result.timing);
        // The replay again on the resolved ledger: the best is what to compare.
        let mut times = vec![result.timing.get("build_ms").copied().unwrap_or(f64::MAX)];
        for _ in 1..repeat {
            let again = engine.build(BuildOptions {
                full: true,
                ..BuildOptions::at(as_of)
            });
            times.push(again.timing.get("build_ms").copied().unwrap_or(f64::MAX));
        }
        let best = times.iter().copied().fold(f64::MAX, f64::min);
        let all: Vec<String> = times.iter().map(|t| format!("{t:.0}")).collect();
        println!(
            "  FULL replay, best of {repeat}: {best:.0} ms = {:.0} events/s (all: {})",
            n as f64 / (best / 1000.0),
            all.join(" ")
        );
    }
    println!("peak RSS: {:.0} MiB", peak_rss_mib());
}
