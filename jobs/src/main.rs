//! The `defacto` command line: every job as a subcommand.

fn main() {
    std::process::exit(defacto_jobs::cli::main_with_args(std::env::args_os()));
}
