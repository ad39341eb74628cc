//! A task's record: its state and every attempt at it, as the status query
//! answers it and the journal keeps it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::TaskResult;
use crate::executor::Execution;
use crate::manifest::Priority;

/// A task's state, with FastWorker's `TaskStatus` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    /// Waiting for its `eta`.
    Scheduled,
    Running,
    /// Waiting before its next attempt.
    Retrying,
    Success,
    Failure,
    Cancelled,
}

impl Status {
    pub fn is_final(self) -> bool {
        matches!(self, Status::Success | Status::Failure | Status::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Scheduled => "scheduled",
            Status::Running => "running",
            Status::Retrying => "retrying",
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Cancelled => "cancelled",
        }
    }
}

/// fastworker extension: everything known about a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    pub name: String,
    pub status: Status,
    pub priority: Priority,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub submitted_at: DateTime<Utc>,
    #[serde(default)]
    pub eta: Option<DateTime<Utc>>,
    /// When the first attempt started.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// While an attempt runs: when it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub result: Value,
    #[serde(default)]
    pub error: Option<String>,
    /// Every attempt so far.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    #[serde(default)]
    pub callback: Option<Value>,
    /// For a finished task with a callback: whether it was delivered
    /// (`false`: given up after every try). Absent while it is on its way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_sent: Option<bool>,
    /// While an attempt runs on a subworker: that worker, and the lease it
    /// runs under (kept in the journal, so that a restarted control plane
    /// gives the worker back its lease instead of running the task again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// fastworker extension: the task this one retries (a retry from the
    /// GUI or its API is a new task linked to the old one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    /// fastworker extension: its place in a distributed trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<super::TraceContext>,
}

impl TaskRecord {
    /// Attempts that count against `retries` (see [`Attempt::counts`]).
    pub fn counted_attempts(&self) -> u32 {
        let n = self.attempts.iter().filter(|a| a.counts()).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Attempts that could not start for a shortage of the host.
    pub fn transient_attempts(&self) -> u32 {
        let n = self.attempts.iter().filter(|a| a.is_transient()).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The number the next attempt gets.
    pub fn next_attempt(&self) -> u32 {
        u32::try_from(self.attempts.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// The FastWorker view of this record.
    pub fn task_result(&self) -> TaskResult {
        TaskResult {
            task_id: self.task_id.clone(),
            status: self.status,
            result: self.result.clone(),
            error: self.error.clone(),
            started_at: self.started_at,
            completed_at: self.finished_at,
            callback: self.callback.clone(),
            refused: false,
        }
    }
}

impl TaskRecord {
    /// A task just submitted now: no arguments, no attempt, no result.
    pub fn new(task_id: String, name: String, priority: Priority, status: Status) -> TaskRecord {
        TaskRecord {
            task_id,
            name,
            status,
            priority,
            args: Vec::new(),
            kwargs: Map::new(),
            submitted_at: Utc::now(),
            eta: None,
            started_at: None,
            attempt_started_at: None,
            finished_at: None,
            result: Value::Null,
            error: None,
            attempts: Vec::new(),
            callback: None,
            callback_sent: None,
            retry_of: None,
            trace: None,
            worker: None,
            lease: None,
        }
    }

    /// An `add(1, 2)` record, for unit tests.
    #[cfg(test)]
    pub fn sample(task_id: &str, status: Status) -> TaskRecord {
        TaskRecord {
            args: vec![Value::from(1), Value::from(2)],
            ..TaskRecord::new(task_id.into(), "add".into(), Priority::High, status)
        }
    }
}

/// How an attempt was cut short through no fault of the task; such an
/// attempt does not count against `retries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutShort {
    /// The control plane stopped, or the subworker running it was lost.
    Lost,
    /// A stopping subworker gave it back unfinished.
    HandedBack,
}

/// One attempt at a task.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// A run that ended: the executor's record of it, and the subworker it
    /// ran on (none: the control plane itself).
    Ran {
        execution: Execution,
        worker: Option<String>,
    },
    /// An attempt cut short through no fault of the task.
    CutShort {
        how: CutShort,
        /// Its number among the task's attempts.
        attempt: u32,
        /// Why, ending "; the task runs again (this attempt does not count
        /// against retries)".
        error: String,
        started_at: Option<DateTime<Utc>>,
        worker: Option<String>,
    },
    /// An attempt in a form this build does not know (from a journal
    /// written by another build): kept as it is, counted.
    Other(Value),
}

impl Attempt {
    /// An attempt cut short: `why` it was, and that the task runs again.
    pub fn cut_short(
        how: CutShort,
        attempt: u32,
        why: &str,
        started_at: Option<DateTime<Utc>>,
        worker: Option<&str>,
    ) -> Attempt {
        Attempt::CutShort {
            how,
            attempt,
            error: format!(
                "{why}; the task runs again (this attempt does not count against retries)"
            ),
            started_at,
            worker: worker.map(str::to_owned),
        }
    }

    /// Whether it counts against the task's `retries`: a run that ended
    /// does, unless it could not start for a shortage of the host; an
    /// attempt cut short does not.
    pub fn counts(&self) -> bool {
        match self {
            Attempt::Ran { execution, .. } => !execution.outcome.is_transient(),
            Attempt::CutShort { .. } => false,
            Attempt::Other(_) => true,
        }
    }

    /// Whether it could not start for a shortage of the host.
    pub fn is_transient(&self) -> bool {
        matches!(self, Attempt::Ran { execution, .. } if execution.outcome.is_transient())
    }

    /// How it ended, as its `status` field says.
    pub fn status(&self) -> &str {
        match self {
            Attempt::Ran { execution, .. } => execution.outcome.status(),
            Attempt::CutShort {
                how: CutShort::Lost,
                ..
            } => "lost",
            Attempt::CutShort {
                how: CutShort::HandedBack,
                ..
            } => "handed_back",
            Attempt::Other(v) => v.get("status").and_then(Value::as_str).unwrap_or(""),
        }
    }

    /// The subworker it ran on, if not the control plane.
    pub fn worker(&self) -> Option<&str> {
        match self {
            Attempt::Ran { worker, .. } | Attempt::CutShort { worker, .. } => worker.as_deref(),
            Attempt::Other(v) => v.get("worker").and_then(Value::as_str),
        }
    }

    /// The run's record, for one that ended.
    pub fn execution(&self) -> Option<&Execution> {
        match self {
            Attempt::Ran { execution, .. } => Some(execution),
            _ => None,
        }
    }
}

/// As JSON an attempt is one flat object: a run is the executor's record
/// with `worker` last (when on a subworker); a cut-short attempt is
/// `{attempt, status, error, started_at, worker?}`.
impl Serialize for Attempt {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Attempt::Ran { execution, worker } => {
                #[derive(Serialize)]
                struct Ran<'a> {
                    #[serde(flatten)]
                    execution: &'a Execution,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    worker: Option<&'a str>,
                }
                Ran {
                    execution,
                    worker: worker.as_deref(),
                }
                .serialize(s)
            }
            Attempt::CutShort {
                how,
                attempt,
                error,
                started_at,
                worker,
            } => {
                #[derive(Serialize)]
                struct Cut<'a> {
                    attempt: u32,
                    status: CutShort,
                    error: &'a str,
                    started_at: Option<DateTime<Utc>>,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    worker: Option<&'a str>,
                }
                Cut {
                    attempt: *attempt,
                    status: *how,
                    error,
                    started_at: *started_at,
                    worker: worker.as_deref(),
                }
                .serialize(s)
            }
            Attempt::Other(value) => value.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Attempt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Cut {
            attempt: u32,
            status: CutShort,
            error: String,
            #[serde(default)]
            started_at: Option<DateTime<Utc>>,
            #[serde(default)]
            worker: Option<String>,
        }
        let value = Value::deserialize(d)?;
        let cut = matches!(
            value.get("status").and_then(Value::as_str),
            Some("lost" | "handed_back")
        );
        if cut && let Ok(c) = Cut::deserialize(&value) {
            return Ok(Attempt::CutShort {
                how: c.status,
                attempt: c.attempt,
                error: c.error,
                started_at: c.started_at,
                worker: c.worker,
            });
        }
        match Execution::deserialize(&value) {
            Ok(execution) => Ok(Attempt::Ran {
                worker: value
                    .get("worker")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                execution,
            }),
            Err(_) => Ok(Attempt::Other(value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record with every kind of attempt, as builds before typed
    /// attempts wrote it (`status --json` prints records so): reading it and
    /// writing it back gives the same bytes.
    #[test]
    fn every_kind_of_attempt_reads_and_writes_back_exactly() {
        let golden = include_str!("../../tests/golden/record-with-every-attempt.json");
        let record: TaskRecord = serde_json::from_str(golden).expect("a record");
        let kinds: Vec<&str> = record.attempts.iter().map(Attempt::status).collect();
        assert_eq!(
            kinds,
            [
                "lost",
                "handed_back",
                "lost",
                "spawn_failed",
                "failed",
                "timeout",
                "limit_exceeded",
                "cancelled",
                "success"
            ]
        );
        assert!(
            record
                .attempts
                .iter()
                .all(|a| !matches!(a, Attempt::Other(_)))
        );
        assert_eq!(record.attempts[1].worker(), Some("w2"));
        assert_eq!(record.attempts[4].worker(), Some("w1"));
        // Counted: the failure, the timeout, the limit, the cancel and the
        // success; not the cut-short ones nor the host's shortage.
        assert_eq!(record.counted_attempts(), 5);
        assert_eq!(record.transient_attempts(), 1);
        let again = serde_json::to_string_pretty(&record).expect("json") + "\n";
        assert_eq!(again, golden);
    }

    #[test]
    fn an_attempt_of_an_unknown_form_is_kept_as_it_is() {
        let odd = serde_json::json!({"status": "from-the-future", "x": [1]});
        let attempt: Attempt = serde_json::from_value(odd.clone()).expect("kept");
        assert_eq!(attempt, Attempt::Other(odd.clone()));
        assert!(attempt.counts());
        assert_eq!(serde_json::to_value(&attempt).expect("json"), odd);
    }
}
