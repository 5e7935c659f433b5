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
    no_transparent_huge_pages();
    std::process::exit(defacto_jobs::cli::main_from_env());
}

/// Transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` decides. mimalloc
/// gives freed memory back to the system in small pieces; a huge page with a piece given back
/// is split, and touching it again faults in and zeroes memory a huge page at a time. On the
/// 1 M-event bench a full build spent 3.2-3.6 s in the kernel with them, 1.5-2.0 s without,
/// and ran about a second faster (peak memory unchanged).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and only sets a flag of this
        // process's memory map; a kernel without it returns an error, which changes nothing.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}
