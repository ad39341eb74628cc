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
//! - [`protocol`] is every message on the wire (FastWorker 0.3.0's JSON and
//!   fastworker's extensions), with no I/O.
//! - [`transport`] is the only code that touches NNG.
//! - [`control_plane`] takes tasks through `transport`, orders them in its
//!   core (queue, timers, result cache) and runs them through `executor`.
//! - [`gui`] serves the operators' web GUI, its JSON API, its event stream
//!   and `/metrics` from the control plane's process (axum), fed by the
//!   control plane's events.
//! - [`client`] is the other end, for the CLI and for Rust programs.
//! - [`subworker`] runs tasks a control plane leases to it, through
//!   `client` and `executor`; the control plane's side of that is its
//!   `workers` registry.
//! - [`journal`] keeps every task durable on disk; [`auth`] the tokens;
//!   [`throttle`] and [`clock`] are small helpers.
//! - [`runners`] carries the language runners (the Python runner) inside the binary.
//! - [`cli`] is the command line: it parses arguments, calls the library and
//!   maps errors to exit codes. `main.rs` only calls [`cli::main`].
//!
//! Who talks to whom: `cli` → `client` → `transport` ⇄ `transport` →
//! `control_plane` → `executor` → child processes; `protocol` types travel
//! between them; `cli run` goes straight to `executor`.

pub mod auth;
pub mod cli;
pub mod client;
pub mod clock;
pub mod control_plane;
pub mod executor;
pub mod gui;
pub mod journal;
pub mod manifest;
pub mod protocol;
pub mod runners;
pub mod schedule;
pub mod subworker;
pub mod telemetry;
pub mod throttle;
pub mod transport;
