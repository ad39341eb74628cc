//! Pool mode: warm, long-lived processes for one task type, each serving one
//! request at a time over JSON Lines.
//!
//! A request is the [`TaskRequest`] object plus an `id`; the reply is one line,
//! `{"id", "ok": result}` or `{"id", "error": {"type", "message", "traceback"}}`.
//! A process that dies, times out, is cancelled or breaks the protocol fails
//! only the task it was running and is not reused; the next request starts a
//! fresh one. A process is retired (stdin closed, then stopped) after
//! `max_tasks_per_process` requests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Started;
use super::limits::{self, Cgroups, Prepared};
use super::outcome::{Execution, ExitState, Outcome, STDERR_TAIL, TaskError, TaskRequest};
use super::process::{self, Tail, TaskProcess};
use crate::manifest::TaskSpec;

const CHUNK: usize = 64 * 1024;

/// The warm processes of one task type.
#[derive(Debug)]
pub struct Pool {
    spec: Arc<TaskSpec>,
    /// One permit per process that may exist: at most `pool_size` busy or idle.
    slots: Semaphore,
    idle: Mutex<Vec<PoolProcess>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// Closed because a reload changed the task's definition (not because
    /// the executor stops): a run still waiting for a process goes on
    /// elsewhere.
    replaced: AtomicBool,
    retiring: TaskTracker,
    /// Set as `FASTWORKER_OWNER` on its processes.
    owner: Option<Arc<str>>,
    /// Where its processes get cgroups, when the task has resource limits.
    cgroups: Arc<std::sync::OnceLock<Cgroups>>,
}

#[derive(Debug)]
struct PoolProcess {
    proc: TaskProcess,
    /// Its resource limits (its cgroups), when the task has any.
    limits: Option<Prepared>,
    /// Bytes read from stdout that are not yet a whole line.
    pending: Vec<u8>,
    served: u32,
    /// Read buffers, kept for the process's life rather than made per request.
    out_buf: Box<[u8]>,
    err_buf: Box<[u8]>,
}

impl PoolProcess {
    fn new(proc: TaskProcess, limits: Option<Prepared>) -> Self {
        PoolProcess {
            proc,
            limits,
            pending: Vec::new(),
            served: 0,
            out_buf: vec![0u8; CHUNK].into_boxed_slice(),
            err_buf: vec![0u8; 8192].into_boxed_slice(),
        }
    }
}

/// A run that was waiting for a process of a pool that a reload replaced:
/// it never started, and runs elsewhere. Holds what to report if there is
/// nowhere else.
#[derive(Debug)]
pub struct Replaced(pub Execution);

/// A request as a pool process receives it: the task request plus an `id`.
#[derive(serde::Serialize)]
struct PoolRequest<'a> {
    id: u64,
    #[serde(flatten)]
    request: &'a TaskRequest,
}

/// How a request on a pool process ended, and whether the process is fit for more.
struct Served {
    outcome: Outcome,
    reusable: bool,
}

impl Pool {
    pub fn new(spec: Arc<TaskSpec>) -> Self {
        Pool {
            slots: Semaphore::new(spec.pool_size),
            spec,
            idle: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            replaced: AtomicBool::new(false),
            retiring: TaskTracker::new(),
            owner: None,
            cgroups: Arc::default(),
        }
    }

    /// Its processes' cgroups are made where `cgroups` says (found on first use).
    #[must_use]
    pub fn limited_by(mut self, cgroups: Arc<std::sync::OnceLock<Cgroups>>) -> Self {
        self.cgroups = cgroups;
        self
    }

    /// Starts a warm process, with its limits.
    async fn start(&self) -> Result<PoolProcess, Outcome> {
        let mut limits = match self.spec.limits.any() {
            true => Some(
                Prepared::new(
                    self.cgroups.get_or_init(Cgroups::detect_for_use),
                    &self.spec.limits,
                    true,
                )
                .map_err(|message| Outcome::SpawnFailed {
                    program: self.spec.launch.requested.clone().into(),
                    message,
                    transient: false,
                })?,
            ),
            false => None,
        };
        match process::spawn(&self.spec, &self.env(), limits.as_ref()) {
            Ok(proc) => {
                if let Some(limits) = &mut limits {
                    limits.started();
                }
                Ok(PoolProcess::new(proc, limits))
            }
            Err(outcome) => {
                if let Some(limits) = limits {
                    limits.finish().await;
                }
                Err(outcome)
            }
        }
    }

    /// Its processes get `FASTWORKER_OWNER=owner` (see [`super::kill_strays`]).
    #[must_use]
    pub fn owned_by(mut self, owner: Option<Arc<str>>) -> Self {
        self.owner = owner;
        self
    }

    /// What a new process gets on top of the task's environment.
    fn env(&self) -> Vec<(&str, &str)> {
        let mut env = vec![
            ("FASTWORKER_TASK_NAME", self.spec.name.as_str()),
            ("FASTWORKER_MODE", "pool"),
        ];
        env.extend(
            self.owner
                .as_deref()
                .map(|owner| (process::OWNER_VAR, owner)),
        );
        env
    }

    /// Runs one request on a warm process, starting one if none is idle;
    /// [`Replaced`] if the pool was replaced while it waited.
    pub async fn run(
        &self,
        request: &TaskRequest,
        cancel: &CancellationToken,
    ) -> Result<Execution, Replaced> {
        let waiting = Started::now();
        let permit = tokio::select! {
            permit = self.slots.acquire() => permit,
            () = cancel.cancelled() => {
                return Ok(waiting.finish(request, Outcome::Cancelled, String::new(), None));
            }
        };
        let Ok(_permit) = permit else {
            let closed = waiting.finish(request, pool_closed(), String::new(), None);
            return if self.replaced.load(Ordering::Acquire) {
                Err(Replaced(closed))
            } else {
                Ok(closed)
            };
        };
        let started = Started::now();
        let mut worker = match self.take_idle() {
            Some(worker) => worker,
            None => match self.start().await {
                Ok(worker) => worker,
                Err(outcome) => return Ok(started.finish(request, outcome, String::new(), None)),
            },
        };
        if let Some(cpu) = self.spec.limits.cpu_time {
            limits::renew_cpu_limit(worker.proc.pid, cpu);
        }
        // The process's cgroups count for its whole life: this request's
        // share is what they count from here.
        let before = worker.limits.as_ref().map(Prepared::usage);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut tail = Tail::new(STDERR_TAIL);
        let mut served = worker
            .serve(&self.spec, request, id, cancel, &mut tail)
            .await;
        let stderr = tail.take();
        if let (Some(prepared), Some(before)) = (&worker.limits, before) {
            let usage = prepared.usage().since(before);
            served.outcome = limits::judge(&self.spec.limits, served.outcome, &usage, &stderr);
        }
        worker.served += 1;
        let pid = worker.proc.pid;

        let worn_out = self
            .spec
            .max_tasks_per_process
            .is_some_and(|max| worker.served >= max);
        if served.reusable && !worn_out && !self.closed.load(Ordering::Acquire) {
            self.lock_idle().push(worker);
        } else {
            self.retire(worker);
        }
        Ok(started.finish(request, served.outcome, stderr, Some(pid)))
    }

    /// Shuts it down because its definition changed: runs waiting for a
    /// process are told [`Replaced`].
    pub async fn replace(&self) {
        self.replaced.store(true, Ordering::Release);
        self.shutdown().await;
    }

    /// Stops every process: idle ones now, busy ones when their task ends.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let idle: Vec<PoolProcess> = self.lock_idle().drain(..).collect();
        for worker in idle {
            self.retire(worker);
        }
        self.slots.close();
        self.retiring.close();
        self.retiring.wait().await;
    }

    /// The definition its processes run.
    pub fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    /// Whether its processes run `spec`.
    pub fn runs(&self, spec: &Arc<TaskSpec>) -> bool {
        Arc::ptr_eq(&self.spec, spec) || self.spec.runs_like(spec)
    }

    /// How many warm processes are waiting for work.
    pub fn idle_count(&self) -> usize {
        self.lock_idle().len()
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<PoolProcess>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An idle process that is still alive, if any.
    fn take_idle(&self) -> Option<PoolProcess> {
        loop {
            let mut worker = self.lock_idle().pop()?;
            match worker.proc.child.try_wait() {
                Ok(None) => return Some(worker),
                _ => {
                    tracing::info!(name = %self.spec.name, pid = worker.proc.pid, "idle pool process had exited; replacing it");
                    self.retire(worker);
                }
            }
        }
    }

    /// Closes the process's stdin (a runner exits on EOF) and stops it if it
    /// does not exit within the grace period. Runs in the background.
    fn retire(&self, worker: PoolProcess) {
        let grace = self.spec.grace_period;
        let name = self.spec.name.clone();
        self.retiring.spawn(async move {
            let TaskProcess {
                mut child,
                group,
                stdin,
                pid,
                ..
            } = worker.proc;
            drop(stdin);
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(_) => group.signal(nix::sys::signal::Signal::SIGKILL),
                Err(_) => {
                    tracing::warn!(name = %name, pid, "pool process did not exit on EOF; stopping it");
                    let _ = process::stop(&mut child, group, Duration::ZERO).await;
                }
            }
            if let Some(limits) = worker.limits {
                limits.finish().await;
            }
        });
    }
}

impl PoolProcess {
    async fn serve(
        &mut self,
        spec: &TaskSpec,
        request: &TaskRequest,
        id: u64,
        cancel: &CancellationToken,
        tail: &mut Tail,
    ) -> Served {
        let mut line = serde_json::to_vec(&PoolRequest { id, request }).unwrap_or_default();
        line.push(b'\n');

        let TaskProcess {
            child,
            group,
            stdin,
            stdout,
            stderr,
            ..
        } = &mut self.proc;
        let group = *group;
        let Some(stdin) = stdin.as_mut() else {
            return lost(None);
        };
        let write = async {
            stdin.write_all(&line).await?;
            stdin.flush().await
        };
        tokio::pin!(write);
        // A request line nearly always fits in the pipe: write it before the
        // loop rather than spend a loop turn (and its polls) on it.
        let mut written = futures_util::FutureExt::now_or_never(&mut write).is_some();

        let cap = usize::try_from(spec.max_output).unwrap_or(usize::MAX);
        let deadline = spec.timeout.map(|t| Instant::now() + t);
        let (out_buf, err_buf) = (&mut self.out_buf, &mut self.err_buf);
        let mut err_done = false;

        // Whatever the loop decides, the stderr the process wrote so far is kept.
        let served = loop {
            if let Some(served) = take_reply(&mut self.pending, spec.max_output, id) {
                process::read_available(&*stderr, |b| tail.push(b));
                break served;
            }
            if self.pending.len() > cap {
                let _ = process::stop(child, group, spec.grace_period).await;
                break Served {
                    outcome: Outcome::OutputTooLarge {
                        limit: spec.max_output,
                    },
                    reusable: false,
                };
            }
            // Biased: when the reply is there, take it without polling the
            // other branches (child.wait() costs a waitpid each poll).
            tokio::select! {
                biased;
                read = stdout.read(out_buf) => match read {
                    Ok(0) | Err(_) => {
                        let status = tokio::time::timeout(spec.grace_period, child.wait()).await;
                        let exit = status.ok().and_then(Result::ok).map(process::exit_state);
                        if exit.is_none() {
                            let _ = process::stop(child, group, Duration::ZERO).await;
                        }
                        break lost(exit);
                    }
                    Ok(n) => self.pending.extend_from_slice(&out_buf[..n]),
                },
                done = &mut write, if !written => match done {
                    Ok(()) => written = true,
                    // The process closed stdin: it is exiting; its exit status says why.
                    Err(_) => written = true,
                },
                read = stderr.read(err_buf), if !err_done => match read {
                    Ok(0) | Err(_) => err_done = true,
                    Ok(n) => tail.push(&err_buf[..n]),
                },
                status = child.wait() => {
                    group.signal(nix::sys::signal::Signal::SIGKILL);
                    // A reply written just before exiting still counts.
                    process::read_available(&*stdout, |b| self.pending.extend_from_slice(b));
                    if let Some(mut served) = take_reply(&mut self.pending, spec.max_output, id) {
                        served.reusable = false;
                        break served;
                    }
                    break lost(status.ok().map(process::exit_state));
                }
                () = crate::clock::until(deadline) => {
                    let _ = process::stop(child, group, spec.grace_period).await;
                    break Served {
                        outcome: Outcome::Timeout { limit: spec.timeout.unwrap_or_default() },
                        reusable: false,
                    };
                }
                () = cancel.cancelled() => {
                    let _ = process::stop(child, group, spec.grace_period).await;
                    break Served { outcome: Outcome::Cancelled, reusable: false };
                }
            }
        };
        if !served.reusable {
            process::read_available(&*stderr, |b| tail.push(b));
        }
        served
    }
}

/// Takes the first whole line out of `pending` and judges it as the reply to
/// request `id`; `None` while no line is complete.
fn take_reply(pending: &mut Vec<u8>, max_output: u64, id: u64) -> Option<Served> {
    let end = pending.iter().position(|&b| b == b'\n')?;
    let line: Vec<u8> = pending.drain(..=end).collect();
    if usize::try_from(max_output).is_ok_and(|cap| end > cap) {
        // A whole line that is too long: the process itself behaved.
        return Some(Served {
            outcome: Outcome::OutputTooLarge { limit: max_output },
            reusable: true,
        });
    }
    Some(judge_reply(&line[..end], id))
}

/// The outcome of a reply line.
fn judge_reply(line: &[u8], id: u64) -> Served {
    let invalid = |message: String| Served {
        outcome: Outcome::InvalidOutput {
            message,
            head: process::head(line),
        },
        reusable: false,
    };
    let mut reply: Map<String, Value> = match serde_json::from_slice(line) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return invalid("a pool reply must be a JSON object".to_owned()),
        Err(e) => return invalid(format!("a pool reply is not valid JSON: {e}")),
    };
    if reply.get("id").and_then(Value::as_u64) != Some(id) {
        return invalid(format!(
            "reply id {} does not match request id {id}",
            reply.get("id").unwrap_or(&Value::Null)
        ));
    }
    if let Some(result) = reply.remove("ok") {
        return match super::outcome::check_result(&result) {
            Ok(()) => Served {
                outcome: Outcome::Success { result },
                reusable: true,
            },
            // The process behaved; its answer is refused.
            Err(message) => Served {
                reusable: true,
                ..invalid(message)
            },
        };
    }
    match reply
        .remove("error")
        .map(serde_json::from_value::<TaskError>)
    {
        Some(Ok(error)) => Served {
            outcome: Outcome::Failed {
                exit: None,
                error: Some(error),
                process_lost: false,
            },
            reusable: true,
        },
        Some(Err(e)) => invalid(format!("a pool reply's `error` is malformed: {e}")),
        None => invalid("a pool reply needs `ok` or `error`".to_owned()),
    }
}

fn lost(exit: Option<ExitState>) -> Served {
    Served {
        outcome: Outcome::Failed {
            exit,
            error: None,
            process_lost: true,
        },
        reusable: false,
    }
}

fn pool_closed() -> Outcome {
    Outcome::Failed {
        exit: None,
        error: Some(TaskError {
            kind: "PoolClosed".to_owned(),
            message: "the executor is shutting down".to_owned(),
            traceback: None,
        }),
        process_lost: false,
    }
}
