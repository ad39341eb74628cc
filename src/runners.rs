//! The language runners shipped inside the binary.
//!
//! The Python runner's source lives in `runners/python/fastworker_runner.py`
//! (run it directly to debug it); the binary carries a copy and passes it to
//! the interpreter with `-c`, so an installed `fastworker` needs no other files.

/// Source of `runners/python/fastworker_runner.py`.
pub const PYTHON_RUNNER: &str = include_str!("../runners/python/fastworker_runner.py");
