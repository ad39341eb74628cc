//! The manifest exactly as written: serde types that mirror `tasks.toml` key for key.
//!
//! Every struct denies unknown keys, and every value keeps its span so that
//! [`super::resolve`] can point at the line of any key it rejects. Nothing here
//! applies defaults or checks meaning; that is the resolver's job.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::manifest::schema::{
    AnyValue, CatchUp, CommandLine, DurationValue, Overlap, Size, Until,
};
use crate::manifest::{Mode, Priority};

/// A value and where it was written (toml's `Spanned`); the JSON Schema
/// of the manifest sees the value alone.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct Spanned<T>(toml::Spanned<T>);

impl<T> Spanned<T> {
    pub fn new(span: Range<usize>, value: T) -> Spanned<T> {
        Spanned(toml::Spanned::new(span, value))
    }

    pub fn get_ref(&self) -> &T {
        self.0.get_ref()
    }

    pub fn span(&self) -> Range<usize> {
        self.0.span()
    }
}

impl<T: JsonSchema> JsonSchema for Spanned<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

/// A value and where it was written.
pub type S<T> = Option<Spanned<T>>;

/// A manifest: `tasks.toml`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "fastworker manifest (tasks.toml)",
    description = "Tasks that fastworker runs: each [tasks.NAME] is a command, a script or a Python function, with its options. Reference: docs/manifest.md."
)]
pub struct RawManifest {
    /// Options every task takes unless it sets its own (not a way to run).
    pub defaults: Option<Spanned<RawTable>>,
    /// Interpreters that run a program speaking the pool protocol
    /// (`python` is built in).
    #[serde(default)]
    pub runners: BTreeMap<String, Spanned<RawRunner>>,
    /// The tasks, by name (the name clients submit).
    #[serde(default)]
    pub tasks: BTreeMap<String, Spanned<RawTable>>,
}

/// One `[tasks.NAME]` table, or `[defaults]` (which may hold only the options).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Task")]
pub struct RawTable {
    // Ways to run: exactly one per task, none in [defaults].
    /// A program and its arguments; the request comes as JSON on stdin, the
    /// result goes as JSON on stdout. One of command, script or function.
    #[schemars(with = "Option<CommandLine>")]
    pub command: S<toml::Value>,
    /// A script file (relative to the manifest), run by `interpreter` or by
    /// itself. One of command, script or function.
    pub script: S<String>,
    /// The program that runs `script` (e.g. `"python3"`), or a runner's
    /// interpreter.
    #[schemars(with = "Option<CommandLine>")]
    pub interpreter: S<toml::Value>,
    /// The runner that calls `function` (`python` is built in).
    pub runner: S<String>,
    /// A function for the runner, `module:function` (e.g.
    /// `"examples.tasks:add"`). One of command, script or function.
    #[schemars(example = "examples.tasks:add")]
    pub function: S<String>,

    // Options.
    /// What the task does (shown by `fastworker list` and the GUI).
    pub description: S<String>,
    /// How long an attempt may run before it is stopped (SIGTERM, then
    /// SIGKILL after grace_period). No limit by default.
    #[schemars(with = "Option<DurationValue>")]
    pub timeout: S<toml::Value>,
    /// The priority of its tasks unless the submit names one.
    pub priority: S<Priority>,
    /// Attempts after the first when one fails (default 0).
    pub retries: S<u32>,
    /// The wait before the first retry, doubled for each next one (default
    /// "1s").
    #[schemars(with = "Option<DurationValue>")]
    pub retry_backoff: S<toml::Value>,
    /// Environment variables of its processes.
    pub env: S<BTreeMap<String, String>>,
    /// Whether its processes inherit fastworker's environment (default
    /// true).
    pub inherit_env: S<bool>,
    /// The working directory of its processes (relative to the manifest).
    pub cwd: S<String>,
    /// The largest result (stdout) taken (default "16MiB").
    #[schemars(with = "Option<Size>")]
    pub max_output: S<toml::Value>,
    /// At most this many of its tasks run at once, here and on subworkers.
    pub max_concurrency: S<u32>,
    /// `oneshot`: a process per task; `pool`: warm processes that serve
    /// many (the runners' default).
    pub mode: S<Mode>,
    /// Warm processes at most (mode = "pool"; default: the number of
    /// cores).
    #[schemars(range(min = 1))]
    pub pool_size: S<u32>,
    /// A warm process is replaced after serving this many tasks.
    #[schemars(range(min = 1))]
    pub max_tasks_per_process: S<u32>,
    /// The wait between SIGTERM and SIGKILL when a task is stopped (default
    /// "5s").
    #[schemars(with = "Option<DurationValue>")]
    pub grace_period: S<toml::Value>,

    // Resource limits of each task process.
    /// The memory a task process may use (e.g. "512MiB").
    #[schemars(with = "Option<Size>")]
    pub memory_limit: S<toml::Value>,
    /// The CPU time an attempt may use.
    #[schemars(with = "Option<DurationValue>")]
    pub cpu_time_limit: S<toml::Value>,
    /// Open files per task process.
    pub max_open_files: S<u32>,
    /// Processes (and threads) per task process.
    pub max_processes: S<u32>,

    // When it runs by itself (a task only).
    /// When the control plane submits it by itself: `cron` or `every`.
    pub schedule: S<RawSchedule>,
}

/// A task's `schedule = { … }`: a cron expression or an interval, and
/// what each fire submits.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Schedule")]
pub struct RawSchedule {
    /// A cron expression (five fields, Sunday 0 or 7, names, `@daily`...).
    /// One of cron or every.
    #[schemars(example = "*/5 * * * *")]
    pub cron: S<String>,
    /// An interval. One of cron or every.
    #[schemars(with = "Option<DurationValue>")]
    pub every: S<toml::Value>,
    /// The time zone of `cron` and `until` (an IANA name; default UTC).
    #[schemars(example = "Europe/Paris")]
    pub timezone: S<String>,
    /// Fires at most (kept across restarts).
    pub count: S<u64>,
    /// No fire after this time.
    #[schemars(with = "Option<Until>")]
    pub until: S<toml::Value>,
    /// The arguments of each fired task.
    #[schemars(with = "Option<Vec<AnyValue>>")]
    pub args: S<Vec<toml::Value>>,
    /// The keyword arguments of each fired task.
    #[schemars(with = "Option<BTreeMap<String, AnyValue>>")]
    pub kwargs: S<toml::value::Table>,
    /// The priority of each fired task (default: the task's).
    pub priority: S<Priority>,
    /// Fires missed while the control plane was down: `skip` or `once`.
    #[schemars(with = "Option<CatchUp>")]
    pub catch_up: S<String>,
    /// A fire while the previous run still goes: `skip` or `allow`.
    #[schemars(with = "Option<Overlap>")]
    pub overlap: S<String>,
}

/// One `[runners.NAME]` table: an interpreter, the program it runs, and pool settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Runner")]
pub struct RawRunner {
    /// The interpreter (e.g. `"python3"` or `["node"]`).
    #[schemars(with = "Option<CommandLine>")]
    pub interpreter: S<toml::Value>,
    /// The runner program it runs (relative to the manifest).
    pub script: S<String>,
    /// `pool` (the default for runners) or `oneshot`.
    pub mode: S<Mode>,
    /// Warm processes at most.
    #[schemars(range(min = 1))]
    pub pool_size: S<u32>,
    /// A warm process is replaced after serving this many tasks.
    #[schemars(range(min = 1))]
    pub max_tasks_per_process: S<u32>,
}
