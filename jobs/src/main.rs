//! The `defacto` command line: every job as a subcommand. The same executable is also each
//! single-job binary: invoked under the name `normalize`, `build`, `tick` or `export` (a
//! link, as the container image installs them) it runs that job, so `build ARGS` is
//! `defacto build ARGS`.

fn main() {
    std::process::exit(defacto_jobs::cli::main_from_env());
}
