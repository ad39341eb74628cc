//! From wire messages to core commands and back: what each socket answers.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::callbacks::CallbackPolicy;
use super::core::{Acceptance, Command, NewTask};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::auth::{Access, Need};
use crate::protocol::Authed;
use crate::protocol::{
    self, Ack, Applied, BatchReply, CancelReply, ErrorReply, Manage, Query, Registered, ReplyMode,
    ResultReply, Status, StatusReply, Submit, TaskInfo, TaskList, TaskResult, WireTask, WorkerInfo,
    WorkerList,
};
use crate::throttle::Throttle;
use crate::transport::Request;

const SHUT_DOWN: &str = "the control plane is shutting down";

/// What a submit taken while the control plane stops is told.
const DEFERRED: &str = "accepted while the control plane stops: the task is in the journal and runs after the next start";

/// Who may use the sockets (the tokens), and the requests turned away.
#[derive(Debug)]
pub struct Gate {
    access: Access,
    denied: AtomicU64,
    throttle: Throttle,
}

impl Gate {
    pub fn new(access: Access) -> Gate {
        Gate {
            access,
            denied: AtomicU64::new(0),
            throttle: Throttle::new(std::time::Duration::from_secs(60)),
        }
    }

    /// Requests refused for a missing or wrong token since the start.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    /// A decoded request whose token lets it through, or the reply that
    /// refuses it (undecodable, or unauthorized). Refusals are counted and
    /// logged at most once a minute.
    fn admit<T>(
        &self,
        decoded: Result<Authed<T>, String>,
        need: Need,
        socket: &str,
    ) -> Result<T, Vec<u8>> {
        let authed = decoded.map_err(|error| protocol::encode(&ErrorReply { error }))?;
        match self.access.check(need, authed.auth.as_deref()) {
            Ok(()) => Ok(authed.message),
            Err(error) => {
                let denied = self.denied.fetch_add(1, Ordering::Relaxed) + 1;
                if self.throttle.allow() {
                    tracing::warn!(
                        denied,
                        "a request on the {socket} socket refused: {error} (logged at most once a minute)"
                    );
                }
                Err(protocol::encode(&ErrorReply { error }))
            }
        }
    }
}

/// The reply to a request a limit turned away (see [`crate::transport::Limits`]).
pub fn busy_reply() -> Vec<u8> {
    protocol::encode(&ErrorReply {
        error: "busy: the control plane is at its limit of requests under way or of large messages being read; try again shortly".to_owned(),
    })
}

/// A handle on the core, for the socket handlers.
#[derive(Debug, Clone)]
pub struct CoreHandle {
    tx: mpsc::Sender<Command>,
}

impl CoreHandle {
    pub fn new(tx: mpsc::Sender<Command>) -> Self {
        CoreHandle { tx }
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (respond, answer) = oneshot::channel();
        self.tx.send(command(respond)).await.ok()?;
        answer.await.ok()
    }

    /// Each task's status once accepted, in order.
    pub async fn submit(&self, tasks: Vec<NewTask>) -> Result<Acceptance, String> {
        self.ask(|respond| Command::Submit { tasks, respond })
            .await
            .unwrap_or_else(|| Err(SHUT_DOWN.to_owned()))
    }

    pub async fn get(&self, task_id: String) -> Option<protocol::TaskRecord> {
        self.ask(|respond| Command::Get { task_id, respond })
            .await
            .flatten()
    }

    pub async fn cancel(&self, task_id: String) -> CancelReply {
        let id = task_id.clone();
        self.ask(|respond| Command::Cancel { task_id, respond })
            .await
            .unwrap_or_else(|| CancelReply {
                cancelled: false,
                task_id: id,
                status: None,
                error: Some(SHUT_DOWN.to_owned()),
            })
    }

    /// Cancels every running task now (used on a second shutdown signal).
    pub async fn force_stop(&self) {
        let _ = self.tx.send(Command::ForceStop).await;
    }

    pub async fn stats(&self) -> Option<super::core::Stats> {
        self.ask(|respond| Command::Stats { respond }).await
    }

    /// The control plane's own slots, then each subworker.
    pub async fn workers(&self) -> Option<Vec<WorkerInfo>> {
        self.ask(|respond| Command::Workers { respond }).await
    }

    /// Runs `visit` over every record the core holds, in the core (so it
    /// should be quick); false if the core has stopped.
    pub async fn visit(&self, visit: super::core::Visit) -> bool {
        self.tx.send(Command::Visit { visit }).await.is_ok()
    }

    /// The records of `ids` that are known, in that order.
    pub async fn get_many(&self, ids: Vec<String>) -> Option<Vec<protocol::TaskRecord>> {
        self.ask(|respond| Command::GetMany { ids, respond }).await
    }

    /// The queues, with the first `next` tasks of each.
    pub async fn queues(&self, next: usize) -> Option<super::core::Queues> {
        self.ask(|respond| Command::Queues { next, respond }).await
    }

    /// Sends a command; false if the core has stopped.
    pub async fn send(&self, command: Command) -> bool {
        self.tx.send(command).await.is_ok()
    }

    /// Deletes a finished task's record (answered once that is on disk).
    pub async fn delete(&self, task_id: String) -> Result<(), super::core::Refused> {
        self.ask(|respond| Command::Delete { task_id, respond })
            .await
            .unwrap_or_else(|| Err(super::core::Refused::Live(SHUT_DOWN.to_owned())))
    }
}

/// A submit socket: a task (answered when it finishes, or at once in ack
/// mode) or a batch (answered once all are accepted or all refused).
///
/// A task's priority is its message's `priority` field (FastWorker's client
/// always sends one, matching the socket it uses), else the task's priority
/// in the manifest; the socket a message arrives on does not override it.
pub async fn submit(cx: Arc<Context>, request: Request) -> Vec<u8> {
    if protocol::pickle::is_pickle(request.bytes()) {
        return pickle_refusal(request.bytes());
    }
    let decoded = Submit::decode(request.bytes());
    // The message's bytes (and its share of the in-flight budget) go now,
    // not when the task ends.
    drop(request);
    let core = &cx.core;
    match cx.gate.admit(decoded, Need::Client, "submit") {
        Err(reply) => reply,
        Ok(Submit::Task(task)) => submit_one(&cx, *task).await,
        Ok(Submit::Batch(tasks)) => {
            let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
            let new: Result<Vec<NewTask>, String> = tasks
                .into_iter()
                .map(|t| new_task(t, &cx.callbacks))
                .collect();
            let accepted = match new {
                Ok(new) => core.submit(new).await,
                Err(e) => Err(e),
            };
            protocol::encode(&match accepted {
                Ok(acceptance) => BatchReply {
                    batch_accepted: true,
                    task_ids: ids,
                    error: None,
                    note: acceptance.deferred.then(|| DEFERRED.to_owned()),
                },
                Err(error) => BatchReply {
                    batch_accepted: false,
                    task_ids: Vec::new(),
                    error: Some(error),
                    note: None,
                },
            })
        }
    }
}

async fn submit_one(cx: &Context, task: WireTask) -> Vec<u8> {
    let core = &cx.core;
    let (task_id, mode) = (task.id.clone(), task.reply);
    let new = new_task(task, &cx.callbacks);
    // A delayed task is answered at once, in either mode: holding the reply
    // until its eta would make clients time out and resend it (FastWorker
    // 0.3.0 sent no reply at all, and its client's resends ran a countdown
    // task four times).
    let delayed = matches!(&new, Ok(t) if t.eta.is_some_and(|eta| eta > chrono::Utc::now()));
    let (new, done) = match (new, mode) {
        (Ok(mut t), ReplyMode::Result) if !delayed => {
            let (tx, rx) = oneshot::channel();
            t.waiter = Some(tx);
            (Ok(t), Some(rx))
        }
        (new, _) => (new, None),
    };
    let accepted = match new {
        Ok(new) => core.submit(vec![new]).await,
        Err(e) => Err(e),
    };
    match (accepted, done) {
        (Err(error), _) => match mode {
            ReplyMode::Result => protocol::encode(&refused(&task_id, error)),
            ReplyMode::Ack => protocol::encode(&Ack {
                task_id,
                accepted: false,
                status: None,
                error: Some(error),
                note: None,
            }),
        },
        (Ok(acceptance), None) => match mode {
            ReplyMode::Ack => protocol::encode(&Ack {
                task_id,
                accepted: true,
                status: acceptance.statuses.first().copied(),
                error: None,
                note: acceptance.deferred.then(|| DEFERRED.to_owned()),
            }),
            // A delayed task: FastWorker's TaskResult, status "scheduled".
            ReplyMode::Result => match core.get(task_id.clone()).await {
                Some(record) => protocol::encode(&record.task_result()),
                None => protocol::encode(&refused(&task_id, SHUT_DOWN.to_owned())),
            },
        },
        (Ok(_), Some(done)) => match done.await {
            Ok(record) => protocol::encode(&record.task_result()),
            Err(_) => protocol::encode(&refused(&task_id, SHUT_DOWN.to_owned())),
        },
    }
}

/// A FastWorker `TaskResult` saying the task was not taken.
fn refused(task_id: &str, error: String) -> TaskResult {
    TaskResult {
        task_id: task_id.to_owned(),
        status: Status::Failure,
        result: serde_json::Value::Null,
        error: Some(error),
        started_at: None,
        completed_at: None,
        callback: None,
        refused: true,
    }
}

/// A task as the core takes it, once its message has passed every check.
pub fn new_task(task: WireTask, callbacks: &CallbackPolicy) -> Result<NewTask, String> {
    task.check()?;
    if let Some(callback) = &task.callback {
        callbacks
            .check(callback)
            .map_err(|e| format!("task {}: {e}", task.id))?;
    }
    let eta = task
        .eta
        .as_deref()
        .map(protocol::parse_time)
        .transpose()
        .map_err(|e| format!("task {}: bad eta: {e}", task.id))?;
    Ok(NewTask {
        task_id: task.id,
        name: task.name,
        args: task.args,
        kwargs: task.kwargs,
        priority: task.priority,
        eta,
        callback: task.callback,
        retry_of: None,
        trace: Some(crate::protocol::TraceContext::new(
            task.traceparent.as_deref(),
            task.tracestate.as_deref(),
        )),
        waiter: None,
    })
}

/// A pickled request (FastWorker's client with
/// `FASTWORKER_SERIALIZATION_FORMAT=PICKLE`): never unpickled; answered
/// with a pickle the client reads as a failure that names the fix.
fn pickle_refusal(bytes: &[u8]) -> Vec<u8> {
    static THROTTLE: std::sync::OnceLock<Throttle> = std::sync::OnceLock::new();
    if THROTTLE
        .get_or_init(|| Throttle::new(std::time::Duration::from_secs(60)))
        .allow()
    {
        tracing::warn!(
            "a pickled request refused: a FastWorker client runs with FASTWORKER_SERIALIZATION_FORMAT=PICKLE; this control plane speaks JSON only (logged at most once a minute)"
        );
    }
    protocol::pickle::refusal(bytes)
}

/// What the socket handlers share.
#[derive(Debug)]
pub struct Context {
    pub core: CoreHandle,
    /// The tokens, and the requests they turned away.
    pub gate: Gate,
    /// Where submits may ask for callbacks to go.
    pub callbacks: CallbackPolicy,
    /// What the query socket says about the control plane itself (the
    /// manifest as last loaded).
    pub manifest: super::reload::ManifestCell,
    pub info: protocol::Info,
    /// The scheduled tasks, as the scheduler keeps them.
    pub schedules: crate::schedule::scheduler::Schedules,
    /// Reloads the manifest (`{"action": "reload"}`).
    pub reloader: Option<Arc<super::reload::Reloader>>,
}

/// The query socket: results, status, cancel, the task list, the workers.
pub async fn query(cx: Arc<Context>, request: Request) -> Vec<u8> {
    let (core, manifest) = (&cx.core, &cx.manifest.get());
    if protocol::pickle::is_pickle(request.bytes()) {
        return pickle_refusal(request.bytes());
    }
    let decoded = Query::decode(request.bytes());
    drop(request);
    match cx.gate.admit(decoded, Need::Client, "query") {
        Ok(Query::Info) => protocol::encode(&cx.info),
        Ok(Query::Reload) => protocol::encode(&match &cx.reloader {
            Some(reloader) => match reloader.reload().await {
                Ok(report) => protocol::ReloadReply {
                    reloaded: true,
                    report: Some(report),
                    errors: Vec::new(),
                },
                Err(errors) => protocol::ReloadReply {
                    reloaded: false,
                    report: None,
                    errors,
                },
            },
            None => protocol::ReloadReply {
                reloaded: false,
                report: None,
                errors: vec!["this control plane cannot reload its manifest (it was started without one to load again)".to_owned()],
            },
        }),
        Ok(Query::Schedules) => {
            let mut schedules = Vec::new();
            for row in cx.schedules.rows() {
                let mut json = crate::schedule::scheduler::row_json(&row);
                let last = match &row.state.last_task {
                    Some(id) => core.get(id.clone()).await.map(|r| r.status),
                    None => None,
                };
                json["last_status"] = serde_json::json!(last);
                schedules.push(json);
            }
            protocol::encode(&protocol::ScheduleList { schedules })
        }
        Ok(Query::Workers) => match core.workers().await {
            Some(workers) => protocol::encode(&WorkerList { workers }),
            None => protocol::encode(&ErrorReply {
                error: SHUT_DOWN.to_owned(),
            }),
        },
        Err(reply) => reply,
        Ok(Query::Result { task_id }) => protocol::encode(&match core.get(task_id.clone()).await {
            Some(record) => ResultReply {
                found: true,
                result: Some(record.task_result()),
                error: None,
            },
            None => ResultReply {
                found: false,
                result: None,
                error: Some(format!("task {task_id} not found (unknown, or expired)")),
            },
        }),
        Ok(Query::Status { task_id }) => protocol::encode(&match core.get(task_id.clone()).await {
            Some(record) => StatusReply {
                found: true,
                task: Some(record),
                error: None,
            },
            None => StatusReply {
                found: false,
                task: None,
                error: Some(format!("task {task_id} not found (unknown, or expired)")),
            },
        }),
        Ok(Query::Cancel { task_id }) => protocol::encode(&core.cancel(task_id).await),
        Ok(Query::ListTasks) => protocol::encode(&TaskList {
            tasks: manifest
                .tasks
                .values()
                .map(|t| TaskInfo {
                    name: t.name.clone(),
                    runs: t.how.describe(&manifest.dir),
                    mode: t.mode.to_string(),
                    priority: t.priority,
                    description: t.description.clone(),
                })
                .collect(),
        }),
    }
}

/// The management socket: what subworkers send (see [`protocol::Manage`]).
pub async fn manage(cx: Arc<Context>, request: Request) -> Vec<u8> {
    let decoded = Manage::decode(request.bytes());
    drop(request);
    let core = &cx.core;
    let message = match cx.gate.admit(decoded, Need::Worker, "subworker") {
        Ok(message) => message,
        Err(reply) => return reply,
    };
    let gone = || Applied {
        applied: false,
        error: Some(SHUT_DOWN.to_owned()),
    };
    match message {
        Manage::Register(registration) => {
            let registration = Box::new(registration);
            let reply = core
                .ask(|respond| Command::Register {
                    registration,
                    respond,
                })
                .await
                .unwrap_or_else(|| Registered {
                    registered: false,
                    error: Some(SHUT_DOWN.to_owned()),
                    warnings: Vec::new(),
                    cancel: Vec::new(),
                });
            protocol::encode(&reply)
        }
        Manage::Poll(poll) => {
            let reply = core
                .ask(|respond| Command::Poll { poll, respond })
                .await
                .unwrap_or_default();
            protocol::encode(&reply)
        }
        Manage::Result(result) => {
            let mut execution = Box::new(result.execution);
            // Held to the same bound as a result run here.
            if let crate::executor::Outcome::Success { result } = &execution.outcome
                && let Err(message) = crate::executor::check_result(result)
            {
                execution.outcome = crate::executor::Outcome::InvalidOutput {
                    message,
                    head: String::new(),
                };
            }
            let reply = core
                .ask(|respond| Command::WorkResult {
                    hello: result.hello,
                    lease: result.lease,
                    execution,
                    respond,
                })
                .await
                .unwrap_or_else(gone);
            protocol::encode(&reply)
        }
        Manage::Release(release) => {
            let reply = core
                .ask(|respond| Command::Release {
                    hello: release.hello,
                    lease: release.lease,
                    reason: release.reason,
                    respond,
                })
                .await
                .unwrap_or_else(gone);
            protocol::encode(&reply)
        }
        Manage::Deregister(hello) => {
            let reply = core
                .ask(|respond| Command::Deregister { hello, respond })
                .await
                .unwrap_or_else(gone);
            protocol::encode(&reply)
        }
    }
}
