//! fastworker: a brokerless task runner. Tasks are declared in a manifest
//! (`tasks.toml`) and each runs as a child process that reads a JSON request
//! on stdin and writes a JSON result on stdout.
//!
//! # Layout
//!
//! - [`manifest`] finds, parses and validates `tasks.toml` into [`manifest::TaskSpec`]s.
//! - [`executor`] runs a task spec as a child process (one-shot or from a
//!   warm pool) and reports an [`executor::Execution`]; it is the only code that
//!   starts or signals task processes.
//! - [`runners`] carries the language runners (the Python runner) inside the binary.
//! - [`cli`] is the command line: it parses arguments, calls the library and
//!   maps errors to exit codes. `main.rs` only calls [`cli::main`].
//!
//! Who talks to whom: `cli` → `manifest` (load) → `executor` (run) → child
//! processes. The control plane, wire protocol and NNG transport arrive with
//! the next parts and sit between `cli` and `executor`.

pub mod cli;
pub mod client;
pub mod control_plane;
pub mod executor;
pub mod manifest;
pub mod protocol;
pub mod runners;
pub mod transport;
