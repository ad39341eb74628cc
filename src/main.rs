//! The `fastworker` binary: everything happens in [`fastworker::cli`].

/// mimalloc rather than the system allocator: records are built on one
/// thread and dropped on another (the core, the journal's writer, the
/// sockets' tasks), which glibc's malloc serves slowly (see
/// docs/benchmarks.md). Without transparent huge pages (`no_thp`): a fresh
/// 2 MiB page is zeroed whole when first touched, which cost more than it
/// saved.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    fastworker::cli::main()
}
