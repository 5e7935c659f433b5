//! The `defacto` command line: every job as a subcommand. The same executable is also each
//! single-job binary: invoked under the name `normalize`, `build`, `tick` or `export` (a
//! link, as the container image installs them) it runs that job, so `build ARGS` is
//! `defacto build ARGS`.

/// mimalloc instead of the system allocator: the jobs allocate millions of small strings and
/// values from several threads, where glibc's malloc and free took about a quarter of a full
/// build's time (perf, 1 M events).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(defacto_jobs::cli::main_from_env());
}
