//! fastworker's integration tests: one binary, shared helpers, real child
//! processes and real files in temp dirs.

mod bad_input;
mod cli;
mod cli_remote;
mod control_plane;
mod durability;
mod fuzz;
mod gui;
mod gui_browser;
mod helpers;
mod journal;
mod limits;
mod manifest;
mod migration;
mod netns;
mod oneshot;
mod pool;
mod python_client;
mod python_runner;
mod reload;
mod resource_limits;
mod security;
mod starter;
mod subworkers;
mod telemetry;
