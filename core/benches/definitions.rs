//! Parsing and validating definitions: the showcase example, the way every job starts.

use std::path::Path;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use defacto_core::definitions::{load_path, validate, NormalizedDocument};

fn showcase() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/showcase"))
}

fn bench(c: &mut Criterion) {
    let raw = load_path(showcase()).expect("showcase loads");
    c.bench_function("definitions/load_yaml_showcase", |b| {
        b.iter(|| load_path(showcase()).expect("loads"))
    });
    c.bench_function("definitions/validate_showcase", |b| {
        b.iter(|| validate(&raw))
    });
    let defs = validate(&raw).into_definitions().expect("valid");
    c.bench_function("definitions/hash_showcase", |b| {
        b.iter(|| NormalizedDocument::of(&defs).hashes())
    });

    // A plain figure, printed for the issue notes.
    let n = 200;
    let start = Instant::now();
    for _ in 0..n {
        let raw = load_path(showcase()).expect("loads");
        let defs = validate(&raw).into_definitions().expect("valid");
        std::hint::black_box(NormalizedDocument::of(&defs).hashes());
    }
    let per = start.elapsed() / n;
    println!("showcase definitions: load + validate + hash = {per:?} per run");
}

criterion_group!(benches, bench);
criterion_main!(benches);
