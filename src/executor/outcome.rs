//! What goes into a task process and what comes out: [`TaskRequest`],
//! [`Outcome`] (one variant per way a run can end, each with its evidence) and
//! [`Execution`], the record the CLI prints and the control plane stores.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How deep a value in a task's arguments may nest (arrays and objects
/// inside one another). Deeper values are refused at submit.
pub const MAX_NESTING: usize = 64;

/// How deep a task's result may nest: deeper output is invalid. Above
/// [`MAX_NESTING`], so that a task may wrap its arguments (an echo answers
/// with its whole request), and far enough under the usual parser limit of
/// 128 that every record (a result sits 3 levels down in it) stays readable
/// by any JSON parser.
pub const MAX_RESULT_NESTING: usize = 100;

/// How many arrays and objects `value` nests inside one another (`5` is 0,
/// `[5]` is 1, `{"a": [5]}` is 2). Iterative: a deep value cannot overflow
/// the stack here.
pub fn nesting(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0)];
    while let Some((value, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
            Value::Object(fields) => stack.extend(fields.values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    deepest
}

/// An error if `value` nests deeper than `limit`; `what` names it.
pub fn check_nesting(what: &str, value: &Value, limit: usize) -> Result<(), String> {
    match nesting(value) {
        n if n > limit => Err(format!(
            "{what} nests {n} levels deep; the limit is {limit}"
        )),
        _ => Ok(()),
    }
}

/// An error if a task's result nests deeper than [`MAX_RESULT_NESTING`].
pub fn check_result(result: &Value) -> Result<(), String> {
    check_nesting("the result", result, MAX_RESULT_NESTING)
}

/// The JSON object a task process receives (one-shot: on stdin; pool: as one
/// line, with an `id` added by the pool).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRequest {
    pub task_id: String,
    pub name: String,
    #[serde(default)]
    pub args: Vec<Value>,
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// 1 for the first run, 2 for the first retry, and so on.
    pub attempt: u32,
    /// The attempt's W3C trace context, for the task's own spans (also in
    /// the process's environment as `TRACEPARENT`, `TRACESTATE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl TaskRequest {
    /// A request with a fresh id, for attempt 1.
    pub fn new(name: impl Into<String>, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        TaskRequest {
            task_id: uuid::Uuid::new_v4().to_string(),
            name: name.into(),
            args,
            kwargs,
            attempt: 1,
            traceparent: None,
            tracestate: None,
        }
    }
}

/// How a process ended when it was not asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitState {
    Code(i32),
    Signal(i32),
}

impl fmt::Display for ExitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitState::Code(code) => write!(f, "exit code {code}"),
            ExitState::Signal(sig) => match nix::sys::signal::Signal::try_from(*sig) {
                Ok(name) => write!(f, "signal {sig} ({name})"),
                Err(_) => write!(f, "signal {sig}"),
            },
        }
    }
}

/// A structured error reported by the task itself (e.g. a Python exception).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
}

/// How one run of a task ended. Each variant carries its evidence; the stderr
/// tail is kept beside it in [`Execution`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Exit status 0 (one-shot) or an `ok` reply (pool), with the result.
    Success { result: Value },
    /// The task failed: it exited non-zero or by a signal, reported an error,
    /// or its pool process died while running it.
    Failed {
        #[serde(skip_serializing_if = "Option::is_none")]
        exit: Option<ExitState>,
        /// The error the task reported about itself, if any.
        #[serde(rename = "task_error", skip_serializing_if = "Option::is_none")]
        error: Option<TaskError>,
        /// Set when a pool process died under the task (a lost worker).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        process_lost: bool,
    },
    /// The task ran past its timeout and its process group was stopped.
    Timeout {
        #[serde(with = "duration_ms", rename = "limit_ms")]
        limit: Duration,
    },
    /// The result was larger than `max_output`; the process group was stopped.
    OutputTooLarge { limit: u64 },
    /// The output was not one JSON value (one-shot) or a valid reply line (pool).
    InvalidOutput { message: String, head: String },
    /// The process could not be started. `transient` when the cause is a
    /// limit of this host or process (open files, processes, memory): the
    /// control plane tries again later, without counting it against
    /// `retries`, rather than fail the task for its own shortage.
    SpawnFailed {
        program: PathBuf,
        message: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        transient: bool,
    },
    /// The run was cancelled and its process group stopped.
    Cancelled,
    /// A resource limit of the task stopped it (see `executor::limits`):
    /// `value` is the limit (bytes, CPU seconds, files or processes),
    /// `killed` whether the kernel killed it (else it failed on its own),
    /// `cause` how the run ended as seen without the limit in mind.
    LimitExceeded {
        limit: Limit,
        value: u64,
        killed: bool,
        cause: String,
    },
}

/// A resource limit of a task (the manifest's `memory_limit`,
/// `cpu_time_limit`, `max_open_files`, `max_processes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    Memory,
    CpuTime,
    OpenFiles,
    Processes,
}

impl Limit {
    /// The limit and its value, for people: "memory limit 256 MiB".
    pub fn describe(self, value: u64) -> String {
        match self {
            Limit::Memory => format!("memory limit {}", exact_size(value)),
            Limit::CpuTime => format!("CPU time limit {value}s"),
            Limit::OpenFiles => format!("open-files limit {value}"),
            Limit::Processes => format!("process limit {value}"),
        }
    }
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success { .. })
    }

    /// Whether the run failed for a shortage of the host or process
    /// running it, not because of the task (see [`Outcome::SpawnFailed`]).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Outcome::SpawnFailed {
                transient: true,
                ..
            }
        )
    }

    /// Whether this outcome may be retried by the task's retry policy: task
    /// failures, timeouts and lost processes are; a cancel never is, and
    /// neither are mistakes that would only repeat (spawn failure, bad output).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Outcome::Failed { .. } | Outcome::Timeout { .. })
    }

    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Success { .. } => "success",
            Outcome::Failed { .. } => "failed",
            Outcome::Timeout { .. } => "timeout",
            Outcome::OutputTooLarge { .. } => "output_too_large",
            Outcome::InvalidOutput { .. } => "invalid_output",
            Outcome::SpawnFailed { .. } => "spawn_failed",
            Outcome::Cancelled => "cancelled",
            Outcome::LimitExceeded { .. } => "limit_exceeded",
        }
    }
}

impl fmt::Display for Outcome {
    /// One line saying how the run ended, for the CLI and for the wire's
    /// `error` string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Success { .. } => f.write_str("succeeded"),
            Outcome::Failed {
                exit,
                error,
                process_lost,
            } => {
                if *process_lost {
                    f.write_str("the pool process died while running the task")?;
                } else {
                    f.write_str("failed")?;
                }
                if let Some(error) = error {
                    write!(f, ": {}", error.kind)?;
                    if !error.message.is_empty() {
                        write!(f, ": {}", error.message)?;
                    }
                }
                if let Some(exit) = exit {
                    write!(f, " ({exit})")?;
                }
                Ok(())
            }
            Outcome::Timeout { limit } => {
                write!(f, "timed out after {}", humantime::format_duration(*limit))
            }
            Outcome::OutputTooLarge { limit } => {
                write!(f, "output too large: more than {}", exact_size(*limit))
            }
            Outcome::InvalidOutput { message, head } => {
                write!(f, "invalid output: {message}; output began with {head:?}")
            }
            Outcome::SpawnFailed {
                program, message, ..
            } => {
                write!(f, "cannot start {}: {message}", program.display())
            }
            Outcome::Cancelled => f.write_str("cancelled"),
            Outcome::LimitExceeded {
                limit,
                value,
                killed: true,
                ..
            } => write!(f, "killed: {}", limit.describe(*value)),
            Outcome::LimitExceeded {
                limit,
                value,
                cause,
                ..
            } => write!(f, "stopped by its {} ({cause})", limit.describe(*value)),
        }
    }
}

/// A byte count in the largest binary unit that states it exactly.
fn exact_size(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    match bytes {
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= 1024 && b % 1024 == 0 => format!("{} KiB", b / 1024),
        b => format!("{b} bytes"),
    }
}

/// One run of a task: its outcome and the evidence around it.
///
/// As JSON it is one flat record: `status` and the outcome's own fields,
/// `result` on success, `error` (one line, see [`Outcome`]'s `Display`) on
/// anything else, then timings, the stderr tail and the pid.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    pub task_id: String,
    pub name: String,
    pub attempt: u32,
    pub outcome: Outcome,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration: Duration,
    /// The last bytes the task wrote to stderr (bounded, see [`STDERR_TAIL`]).
    pub stderr: String,
    /// The process that ran the task, when one was started.
    pub pid: Option<u32>,
}

impl Serialize for Execution {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Record<'a> {
            task_id: &'a str,
            name: &'a str,
            attempt: u32,
            #[serde(flatten)]
            outcome: &'a Outcome,
            error: Option<String>,
            started_at: DateTime<Utc>,
            finished_at: DateTime<Utc>,
            #[serde(with = "duration_ms")]
            duration_ms: Duration,
            stderr: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            pid: Option<u32>,
        }
        Record {
            task_id: &self.task_id,
            name: &self.name,
            attempt: self.attempt,
            outcome: &self.outcome,
            error: (!self.outcome.is_success()).then(|| self.outcome.to_string()),
            started_at: self.started_at,
            finished_at: self.finished_at,
            duration_ms: self.duration,
            stderr: &self.stderr,
            pid: self.pid,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Execution {
    /// Reads back what `serialize` wrote (a subworker's report of a run).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Record {
            task_id: String,
            name: String,
            attempt: u32,
            #[serde(flatten)]
            outcome: Outcome,
            started_at: DateTime<Utc>,
            finished_at: DateTime<Utc>,
            #[serde(with = "duration_ms")]
            duration_ms: Duration,
            #[serde(default)]
            stderr: String,
            #[serde(default)]
            pid: Option<u32>,
        }
        let r = Record::deserialize(d)?;
        Ok(Execution {
            task_id: r.task_id,
            name: r.name,
            attempt: r.attempt,
            outcome: r.outcome,
            started_at: r.started_at,
            finished_at: r.finished_at,
            duration: r.duration_ms,
            stderr: r.stderr,
            pid: r.pid,
        })
    }
}

/// How much of a task's stderr is kept: the last 64 KiB.
pub const STDERR_TAIL: usize = 64 * 1024;

/// Durations on the wire are milliseconds (a float, so short runs keep precision).
mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        // Whole microseconds: more digits would be noise from float arithmetic.
        s.serialize_f64(d.as_micros() as f64 / 1000.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Duration::try_from_secs_f64(ms / 1000.0).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_execution_reads_back_as_it_was_written() {
        let started_at = Utc::now();
        for outcome in [
            Outcome::Success {
                result: serde_json::json!({"sum": 8}),
            },
            Outcome::Failed {
                exit: Some(ExitState::Code(3)),
                error: Some(TaskError {
                    kind: "ValueError".into(),
                    message: "bad".into(),
                    traceback: None,
                }),
                process_lost: false,
            },
            Outcome::Timeout {
                limit: Duration::from_millis(1500),
            },
            Outcome::Cancelled,
            Outcome::LimitExceeded {
                limit: Limit::Memory,
                value: 256 << 20,
                killed: true,
                cause: "failed (signal 9 (SIGKILL))".into(),
            },
        ] {
            let execution = Execution {
                task_id: "t1".into(),
                name: "add".into(),
                attempt: 2,
                outcome,
                started_at,
                finished_at: started_at,
                duration: Duration::from_micros(1234),
                stderr: "warning\n".into(),
                pid: Some(42),
            };
            let json = serde_json::to_string(&execution).unwrap_or_default();
            let back: Execution =
                serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
            assert_eq!(back, execution, "{json}");
        }
    }
}
