//! The wire protocol: every message between clients and the control plane, as
//! serde types, with one encode/decode pair and a size guard. No I/O here.
//!
//! The format is FastWorker 0.3.0's JSON, so its Python `Client` works
//! unchanged: a submit is its `Task.model_dump()` (or `{"action":
//! "batch_submit"}`), a blocking submit is answered with a `TaskResult`, and
//! the query port takes `{"task_id"}` and `{"action": "cancel"}`. Unknown
//! fields are ignored and missing optional ones defaulted. fastworker's own
//! extensions are marked as such; docs/protocol.md shows every message.

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::manifest::Priority;

mod manage;
pub mod pickle;
mod record;
pub mod trace;

pub use self::manage::{
    Applied, Hello, Lease, Manage, POLL_HOLD_MS, Poll, PollReply, Registered, Registration,
    Release, TaskOffer, WorkResult,
};
pub use self::record::{Attempt, CutShort, Status, TaskRecord};
pub use self::trace::TraceContext;

/// The largest message a control plane reads by default
/// (`--max-message-size`): results are capped at 16 MiB by default, and a
/// batch may carry many tasks. NNG enforces it before a message is read.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Where a control plane listens, and its clients dial, unless told otherwise
/// (FastWorker's default).
pub const DEFAULT_BASE_ADDRESS: &str = "tcp://127.0.0.1:5555";
/// Where control planes announce themselves unless told otherwise.
pub const DEFAULT_DISCOVERY_ADDRESS: &str = "tcp://127.0.0.1:5550";

/// Encodes a message.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serializing these types cannot fail: keys are strings, values are JSON.
    serde_json::to_vec(message)
        .unwrap_or_else(|e| format!(r#"{{"error":"cannot encode reply: {e}"}}"#).into_bytes())
}

/// Decodes a message (its size was bounded when it was received).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("not a valid message: {e}"))
}

/// A value's JSON, cut after `max` characters (with `…`), for lists and
/// event streams: at most about `max` bytes are ever encoded, however large
/// the value.
pub fn preview<T: Serialize + ?Sized>(value: &T, max: usize) -> String {
    struct Bounded {
        out: Vec<u8>,
        max: usize,
    }
    impl std::io::Write for Bounded {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let room = (self.max * 4 + 4).saturating_sub(self.out.len());
            self.out.extend_from_slice(&buf[..buf.len().min(room)]);
            if buf.len() > room {
                return Err(std::io::Error::other("long enough"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut bounded = Bounded {
        out: Vec::new(),
        max,
    };
    // An error only says the value is longer than `max`.
    let _ = serde_json::to_writer(&mut bounded, value);
    let text = String::from_utf8_lossy(&bounded.out);
    cut(&text, max)
}

/// `text`, cut after `max` characters (with `…`).
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// fastworker extension: a request with the token it carried, an `auth`
/// field at the top level of any request (see [`crate::auth`]).
/// FastWorker's Python client sends none.
#[derive(Debug, Clone, PartialEq)]
pub struct Authed<T> {
    pub message: T,
    pub auth: Option<String>,
}

/// Encodes a request with `auth` as its `auth` field (none when `None`).
/// Every request is a JSON object, so the field goes beside its own.
pub fn encode_authed<T: Serialize>(message: &T, auth: Option<&str>) -> Vec<u8> {
    #[derive(Serialize)]
    struct With<'a, T> {
        #[serde(flatten)]
        message: &'a T,
        #[serde(skip_serializing_if = "Option::is_none")]
        auth: Option<&'a str>,
    }
    match auth {
        None => encode(message),
        Some(_) => encode(&With { message, auth }),
    }
}

/// The sockets of a control plane, worked out from its base address the way
/// FastWorker does: base+0..+3 take submits by priority (critical first),
/// base+4 answers queries and cancels, base+5 (or `--subworker-port`)
/// manages subworkers. `ipc://` and `inproc://` bases get `.0` … `.5` suffixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub base: String,
    submit: [String; 4],
    pub query: String,
    pub subworker: String,
}

impl Endpoints {
    pub fn from_base(base: &str, subworker_port: Option<u16>) -> Result<Endpoints, String> {
        let at = |offset: u16| -> Result<String, String> {
            if let Some(rest) = base.strip_prefix("tcp://") {
                let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
                    format!("{base} has no port (write e.g. tcp://127.0.0.1:5555)")
                })?;
                let port: u16 = port
                    .parse()
                    .map_err(|_| format!("{base} has no valid port"))?;
                let port = match (offset, subworker_port) {
                    (5, Some(p)) => p,
                    _ => port
                        .checked_add(offset)
                        .ok_or_else(|| format!("{base}: port {port} + {offset} is over 65535"))?,
                };
                Ok(format!("tcp://{host}:{port}"))
            } else if base.starts_with("ipc://") || base.starts_with("inproc://") {
                Ok(format!("{base}.{offset}"))
            } else {
                Err(format!(
                    "{base} is not a tcp://, ipc:// or inproc:// address"
                ))
            }
        };
        Ok(Endpoints {
            base: base.to_owned(),
            submit: [at(0)?, at(1)?, at(2)?, at(3)?],
            query: at(4)?,
            // A base port too high for +5 is reported when the control
            // plane binds it (pass --subworker-port), not here: clients
            // never use it.
            subworker: at(5).unwrap_or_default(),
        })
    }

    /// The submit socket of `priority`.
    pub fn submit(&self, priority: Priority) -> &str {
        &self.submit[priority as usize]
    }
}

/// How a submit is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyMode {
    /// With the [`TaskResult`] once the task has finished (FastWorker's way).
    #[default]
    Result,
    /// fastworker extension: with an [`Ack`] as soon as the task is accepted.
    Ack,
}

/// A task as FastWorker's `Task.model_dump()` sends it. Only the fields
/// fastworker uses are read; the rest (`created_at`, `status`, …) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireTask {
    pub id: String,
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub args: Vec<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub kwargs: Map<String, Value>,
    /// Overrides the priority of the socket it arrived on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// When to run it: RFC 3339, or Python's `str(datetime)` (local time when naive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Value>,
    /// fastworker extension.
    #[serde(default, skip_serializing_if = "is_default")]
    pub reply: ReplyMode,
    /// fastworker extension: the client's W3C trace context (the task's
    /// span becomes a child of it). FastWorker's client sends none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// The longest task id accepted.
pub const MAX_TASK_ID: usize = 128;

/// Checks a task id: 1 to [`MAX_TASK_ID`] bytes of ASCII letters, digits
/// and `-_.:@+=/#~` (a UUID fits; so do ids people make up, such as
/// `nightly-2026-11-29`), so that ids can be printed, logged and used in
/// file names and URLs as they are.
pub fn check_task_id(id: &str) -> Result<(), String> {
    check_id("task id", id)
}

/// Checks an id (`what` names it in errors) by the rule of [`check_task_id`].
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    let shown = || {
        let cut: String = id.chars().take(40).collect();
        let more = if id.chars().count() > 40 { "…" } else { "" };
        format!("{cut:?}{more}")
    };
    if id.is_empty() {
        return Err(format!("a {what} cannot be empty"));
    }
    if id.len() > MAX_TASK_ID {
        return Err(format!(
            "{what} {} is {} bytes long; the limit is {MAX_TASK_ID}",
            shown(),
            id.len()
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:@+=/#~".contains(*c)))
    {
        return Err(format!(
            "{what} {} contains {bad:?}; use ASCII letters, digits and -_.:@+=/#~",
            shown()
        ));
    }
    Ok(())
}

impl WireTask {
    /// Checks what a submit may carry: a valid id, and arguments and a
    /// callback that nest no deeper than [`crate::executor::MAX_NESTING`].
    pub fn check(&self) -> Result<(), String> {
        use crate::executor::{MAX_NESTING, check_nesting};
        check_task_id(&self.id)?;
        let at = |e: String| format!("task {}: {e}", self.id);
        for arg in &self.args {
            check_nesting("an argument", arg, MAX_NESTING).map_err(at)?;
        }
        for (key, value) in &self.kwargs {
            check_nesting(&format!("keyword argument {key:?}"), value, MAX_NESTING).map_err(at)?;
        }
        if let Some(callback) = &self.callback {
            check_nesting("the callback", callback, MAX_NESTING).map_err(at)?;
        }
        Ok(())
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// What arrives on a submit socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Submit {
    Task(Box<WireTask>),
    Batch(Vec<WireTask>),
}

impl Submit {
    pub fn decode(bytes: &[u8]) -> Result<Authed<Submit>, String> {
        let mut value: Value = decode(bytes)?;
        let auth = match value.as_object_mut().and_then(|o| o.remove("auth")) {
            Some(Value::String(auth)) => Some(auth),
            None | Some(Value::Null) => None,
            Some(_) => return Err("not a valid message: `auth` must be a string".to_owned()),
        };
        Submit::from_value(value).map(|message| Authed { message, auth })
    }

    fn from_value(value: Value) -> Result<Submit, String> {
        match value.get("action").and_then(Value::as_str) {
            None => serde_json::from_value(value)
                .map(|task| Submit::Task(Box::new(task)))
                .map_err(|e| format!("not a task: {e}")),
            Some("batch_submit") => {
                #[derive(Deserialize)]
                struct Batch {
                    tasks: Vec<WireTask>,
                }
                serde_json::from_value::<Batch>(value)
                    .map(|b| Submit::Batch(b.tasks))
                    .map_err(|e| format!("not a batch: {e}"))
            }
            Some(other) => Err(format!("unknown action '{other}' on a submit socket")),
        }
    }
}

/// What arrives on the query socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// FastWorker's `{"task_id"}`: answered with [`ResultReply`].
    Result { task_id: String },
    /// FastWorker's `{"action": "cancel", "task_id"}`: answered with [`CancelReply`].
    Cancel { task_id: String },
    /// fastworker extension `{"action": "status", "task_id"}`: [`StatusReply`].
    Status { task_id: String },
    /// fastworker extension `{"action": "list_tasks"}`: [`TaskList`].
    ListTasks,
    /// fastworker extension `{"action": "workers"}`: [`WorkerList`].
    Workers,
    /// fastworker extension `{"action": "info"}`: [`Info`].
    Info,
    /// fastworker extension `{"action": "schedules"}`: [`ScheduleList`].
    Schedules,
    /// fastworker extension `{"action": "reload"}`: [`ReloadReply`].
    Reload,
}

impl Query {
    pub fn decode(bytes: &[u8]) -> Result<Authed<Query>, String> {
        #[derive(Deserialize)]
        struct Raw {
            action: Option<String>,
            task_id: Option<String>,
            auth: Option<String>,
        }
        let raw: Raw = decode(bytes)?;
        let auth = raw.auth.clone();
        Query::from_raw(raw.action, raw.task_id).map(|message| Authed { message, auth })
    }

    fn from_raw(action: Option<String>, task_id: Option<String>) -> Result<Query, String> {
        let task_id = || {
            task_id
                .clone()
                .ok_or_else(|| "`task_id` is missing".to_owned())
        };
        match action.as_deref() {
            None => Ok(Query::Result {
                task_id: task_id()?,
            }),
            Some("cancel") => Ok(Query::Cancel {
                task_id: task_id()?,
            }),
            Some("status") => Ok(Query::Status {
                task_id: task_id()?,
            }),
            Some("list_tasks") => Ok(Query::ListTasks),
            Some("workers") => Ok(Query::Workers),
            Some("info") => Ok(Query::Info),
            Some("schedules") => Ok(Query::Schedules),
            Some("reload") => Ok(Query::Reload),
            Some(other) => Err(format!("unknown action '{other}'")),
        }
    }
}

/// fastworker extension: the reply to `{"action": "schedules"}`: each
/// scheduled task, its rule, its next fire, what it did so far, and the
/// status of the task it fired last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleList {
    pub schedules: Vec<Value>,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The tasks added, removed and changed (`added`, `removed`, `changed`
    /// on the wire).
    #[serde(flatten)]
    pub tasks: crate::manifest::Changes,
    /// Warm pools replaced (their definition changed, or the type went).
    pub pools_replaced: usize,
    /// Removed types whose accepted tasks still wait or run.
    pub kept_for_accepted: Vec<String>,
}

/// `1 added (x), 0 removed, 0 changed; 1 warm pool replaced`, and the
/// removed types whose accepted tasks still run.
impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.pools_replaced;
        write!(
            f,
            "{}; {n} warm pool{} replaced",
            self.tasks,
            if n == 1 { "" } else { "s" }
        )?;
        if !self.kept_for_accepted.is_empty() {
            write!(
                f,
                "; tasks already accepted of {} run with their old definition",
                self.kept_for_accepted.join(", ")
            )?;
        }
        Ok(())
    }
}

/// fastworker extension: the reply to `{"action": "reload"}`: what changed,
/// or why nothing did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadReply {
    pub reloaded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReloadReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// FastWorker's `TaskResult`: the reply to a blocking submit and the payload
/// of a result query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task_id: String,
    pub status: Status,
    #[serde(default)]
    pub result: Value,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub callback: Option<Value>,
    /// fastworker extension: set when the task was not accepted at all
    /// (unknown task, queue full, shutting down), as opposed to run and failed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused: bool,
}

/// fastworker extension: the reply to a submit in [`ReplyMode::Ack`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub task_id: String,
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Something the submitter should know about an accepted task (taken
    /// while the control plane stops: it runs after the next start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The reply to a batch submit (FastWorker's shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchReply {
    pub batch_accepted: bool,
    #[serde(default)]
    pub task_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// fastworker extension: as [`Ack::note`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The reply to a result query (FastWorker's shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultReply {
    pub found: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The reply to a cancel (FastWorker's shape, plus `error` when refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelReply {
    pub cancelled: bool,
    pub task_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// fastworker extension: the reply to a status query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub found: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// fastworker extension: the tasks a control plane can run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskList {
    pub tasks: Vec<TaskInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub name: String,
    pub runs: String,
    pub mode: String,
    pub priority: Priority,
    #[serde(default)]
    pub description: Option<String>,
}

/// An error reply to a message that could not be understood.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

/// fastworker extension: one worker as `{"action": "workers"}` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub worker_id: String,
    /// `control-plane` (the control plane's own slots) or `subworker`.
    pub kind: String,
    pub address: String,
    /// `active`, `draining`, `inactive` (silent; its tasks went elsewhere),
    /// or `local` for the control plane.
    pub status: String,
    pub load: usize,
    pub capacity: usize,
    pub tasks_done: u64,
    #[serde(default)]
    pub last_seen: Option<DateTime<Utc>>,
    #[serde(default)]
    pub registered_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub tasks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// fastworker extension: the reply to `{"action": "workers"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerList {
    pub workers: Vec<WorkerInfo>,
}

/// fastworker extension: the reply to `{"action": "info"}`, which tells a
/// subworker where the management socket is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub worker_id: String,
    pub base_address: String,
    /// The management socket, as the control plane binds it.
    pub subworker_address: String,
}

/// Parses a time as FastWorker's Python client writes it: `str(datetime)`
/// (`2026-11-22 17:05:00.123456`, local time when it has no offset) or RFC 3339.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%:z"] {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return Local
                .from_local_datetime(&naive)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
                .ok_or_else(|| format!("{text} does not exist in local time"));
        }
    }
    Err(format!(
        "'{text}' is not a time (write RFC 3339, e.g. 2026-11-22T17:05:00Z)"
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_preview_is_cut_and_never_encodes_a_large_value_whole() {
        assert_eq!(preview(&serde_json::json!([5, 3]), 100), "[5,3]");
        let big = serde_json::json!({"data": "é".repeat(1_000_000)});
        let short = preview(&big, 10);
        assert_eq!(short, "{\"data\":\"é…");
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "abc…");
    }

    #[test]
    fn tcp_endpoints_follow_fastworker_ports() {
        let e =
            Endpoints::from_base("tcp://127.0.0.1:5555", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.submit(Priority::Critical), "tcp://127.0.0.1:5555");
        assert_eq!(e.submit(Priority::Low), "tcp://127.0.0.1:5558");
        assert_eq!(e.query, "tcp://127.0.0.1:5559");
        assert_eq!(e.subworker, "tcp://127.0.0.1:5560");
        let e = Endpoints::from_base("tcp://127.0.0.1:5555", Some(7000))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.subworker, "tcp://127.0.0.1:7000");
        assert!(Endpoints::from_base("tcp://127.0.0.1", None).is_err());
        assert!(Endpoints::from_base("tcp://127.0.0.1:65533", None).is_err());
        assert!(Endpoints::from_base("tcp://127.0.0.1:65531", None).is_ok());
        assert!(Endpoints::from_base("http://x:1", None).is_err());
    }

    #[test]
    fn a_fastworker_task_dump_decodes() {
        // As FastWorker 0.3.0's client sends it: json.dumps(task.model_dump(), default=str).
        let dump = json!({
            "id": "5b1c", "name": "add", "args": [5, 3], "kwargs": {}, "priority": "high",
            "created_at": "2026-11-22 17:05:00.123456", "started_at": null, "completed_at": null,
            "status": "pending", "result": null, "error": null, "callback": null,
            "retry_count": 0, "max_retries": 0, "retry_delay": 60.0, "retry_backoff": 2.0,
            "retry_backoff_max": 3600.0, "timeout": null, "eta": null, "assigned_worker": null
        });
        let Ok(Submit::Task(task)) = Submit::decode(&encode(&dump)).map(|a| a.message) else {
            panic!("should decode")
        };
        assert_eq!((task.id.as_str(), task.name.as_str()), ("5b1c", "add"));
        assert_eq!(task.args, vec![json!(5), json!(3)]);
        assert_eq!(task.priority, Some(Priority::High));
        assert_eq!(task.reply, ReplyMode::Result);
        assert!(task.callback.is_none() && task.eta.is_none());
    }

    #[test]
    fn queries_decode() {
        let q = |v: Value| Query::decode(&encode(&v)).map(|a| a.message);
        assert_eq!(
            q(json!({"task_id": "a"})),
            Ok(Query::Result {
                task_id: "a".into()
            })
        );
        assert_eq!(
            q(json!({"action": "cancel", "task_id": "a"})),
            Ok(Query::Cancel {
                task_id: "a".into()
            })
        );
        assert_eq!(q(json!({"action": "list_tasks"})), Ok(Query::ListTasks));
        assert!(q(json!({"action": "explode"})).is_err());
        assert!(q(json!({})).is_err());
    }

    #[test]
    fn the_token_rides_beside_any_request() {
        let task = WireTask {
            id: "t1".into(),
            name: "add".into(),
            args: vec![json!(1)],
            kwargs: Map::new(),
            priority: None,
            eta: None,
            callback: None,
            reply: ReplyMode::Ack,
            traceparent: None,
            tracestate: None,
        };
        let sent = Submit::decode(&encode_authed(&task, Some("secret"))).expect("submit");
        assert_eq!(sent.auth.as_deref(), Some("secret"));
        assert_eq!(sent.message, Submit::Task(Box::new(task.clone())));
        let query = json!({"action": "status", "task_id": "t1"});
        let sent = Query::decode(&encode_authed(&query, Some("secret"))).expect("query");
        assert_eq!(sent.auth.as_deref(), Some("secret"));
        let bye = Manage::Deregister(Hello {
            worker_id: "w".into(),
            session: "s".into(),
        });
        let sent = Manage::decode(&encode_authed(&bye, Some("secret"))).expect("manage");
        assert_eq!((sent.message, sent.auth.as_deref()), (bye, Some("secret")));
        assert_eq!(Query::decode(&encode(&query)).expect("query").auth, None);
    }

    #[test]
    fn python_times_parse() {
        let utc = parse_time("2026-11-22T17:05:00Z").unwrap_or_default();
        assert_eq!(utc.to_rfc3339(), "2026-11-22T17:05:00+00:00");
        let offset = parse_time("2026-11-22 18:05:00.5+01:00").unwrap_or_default();
        assert_eq!(offset.timestamp_millis(), utc.timestamp_millis() + 500);
        assert!(parse_time("2026-11-22 17:05:00.123456").is_ok());
        assert!(parse_time("tomorrow").is_err());
    }
}
