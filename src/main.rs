//! The `fastworker` binary: everything happens in [`fastworker::cli`].

fn main() -> std::process::ExitCode {
    fastworker::cli::main()
}
