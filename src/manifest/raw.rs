//! The manifest exactly as written: serde types that mirror `tasks.toml` key for key.
//!
//! Every struct denies unknown keys, and every value keeps its span so that
//! [`super::resolve`] can point at the line of any key it rejects. Nothing here
//! applies defaults or checks meaning; that is the resolver's job.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::manifest::{Mode, Priority};

/// A value and where it was written.
pub type S<T> = Option<Spanned<T>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    pub defaults: Option<Spanned<RawTable>>,
    #[serde(default)]
    pub runners: BTreeMap<String, Spanned<RawRunner>>,
    #[serde(default)]
    pub tasks: BTreeMap<String, Spanned<RawTable>>,
}

/// One `[tasks.NAME]` table, or `[defaults]` (which may hold only the options).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    // Ways to run: exactly one per task, none in [defaults].
    pub command: S<toml::Value>,
    pub script: S<String>,
    pub interpreter: S<toml::Value>,
    pub runner: S<String>,
    pub function: S<String>,

    // Options.
    pub description: S<String>,
    pub timeout: S<toml::Value>,
    pub priority: S<Priority>,
    pub retries: S<u32>,
    pub retry_backoff: S<toml::Value>,
    pub env: S<BTreeMap<String, String>>,
    pub inherit_env: S<bool>,
    pub cwd: S<String>,
    pub max_output: S<toml::Value>,
    pub max_concurrency: S<u32>,
    pub mode: S<Mode>,
    pub pool_size: S<u32>,
    pub max_tasks_per_process: S<u32>,
    pub grace_period: S<toml::Value>,

    // Resource limits of each task process.
    pub memory_limit: S<toml::Value>,
    pub cpu_time_limit: S<toml::Value>,
    pub max_open_files: S<u32>,
    pub max_processes: S<u32>,

    // When it runs by itself (a task only).
    pub schedule: S<RawSchedule>,
}

/// A task's `schedule = { … }`: a cron expression or an interval, and
/// what each fire submits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    pub cron: S<String>,
    pub every: S<toml::Value>,
    pub timezone: S<String>,
    pub count: S<u64>,
    pub until: S<toml::Value>,
    pub args: S<Vec<toml::Value>>,
    pub kwargs: S<toml::value::Table>,
    pub priority: S<Priority>,
    pub catch_up: S<String>,
    pub overlap: S<String>,
}

/// One `[runners.NAME]` table: an interpreter, the program it runs, and pool settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRunner {
    pub interpreter: S<toml::Value>,
    pub script: S<String>,
    pub mode: S<Mode>,
    pub pool_size: S<u32>,
    pub max_tasks_per_process: S<u32>,
}
