//! One-shot mode: one process per task. The request goes to stdin followed by
//! EOF; stdout must hold exactly one JSON value; exit status 0 means success.

use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Started;
use super::limits::{self, Cgroups, Prepared};
use super::outcome::{Execution, Outcome, STDERR_TAIL, TaskError, TaskRequest};
use super::process::{self, Tail, TaskProcess};
use crate::clock::until;
use crate::manifest::TaskSpec;

/// How long pipes may stay open after the task process has exited and its
/// group has been killed (a process that left the group could hold them).
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
const CHUNK: usize = 64 * 1024;

/// Runs one request in a fresh process and returns how it ended.
/// `owner`, when set, goes to the process as `FASTWORKER_OWNER`; `cgroups`
/// is where a task with resource limits gets its cgroups.
pub async fn run(
    spec: &TaskSpec,
    request: &TaskRequest,
    cancel: &CancellationToken,
    owner: Option<&str>,
    cgroups: Option<&Cgroups>,
) -> Execution {
    let started = Started::now();
    let attempt = request.attempt.to_string();
    let mut extra_env = vec![
        ("FASTWORKER_TASK_ID", request.task_id.as_str()),
        ("FASTWORKER_TASK_NAME", request.name.as_str()),
        ("FASTWORKER_ATTEMPT", attempt.as_str()),
        ("FASTWORKER_MODE", "oneshot"),
    ];
    extra_env.extend(owner.map(|owner| (process::OWNER_VAR, owner)));
    // The attempt's trace context, for the task's own spans (W3C names).
    extra_env.extend(request.traceparent.as_deref().map(|t| ("TRACEPARENT", t)));
    extra_env.extend(request.tracestate.as_deref().map(|t| ("TRACESTATE", t)));
    let mut prepared = match cgroups
        .map(|c| Prepared::new(c, &spec.limits, false))
        .transpose()
    {
        Ok(prepared) => prepared,
        Err(message) => {
            let outcome = Outcome::SpawnFailed {
                program: spec.launch.requested.clone().into(),
                message,
                transient: false,
            };
            return started.finish(request, outcome, String::new(), None);
        }
    };
    let proc = match process::spawn(spec, &extra_env, prepared.as_ref()) {
        Ok(proc) => proc,
        Err(outcome) => {
            if let Some(prepared) = prepared {
                prepared.finish().await;
            }
            return started.finish(request, outcome, String::new(), None);
        }
    };
    if let Some(prepared) = &mut prepared {
        prepared.started();
    }
    let pid = proc.pid;
    let (mut outcome, stderr) = supervise(spec, request, proc, cancel, started.instant).await;
    if let Some(prepared) = prepared {
        let usage = prepared.finish().await;
        outcome = limits::judge(&spec.limits, outcome, &usage, &stderr);
    }
    started.finish(request, outcome, stderr, Some(pid))
}

/// Why we stopped the process ourselves.
enum Stop {
    Timeout,
    Cancelled,
    TooLarge,
}

async fn supervise(
    spec: &TaskSpec,
    request: &TaskRequest,
    proc: TaskProcess,
    cancel: &CancellationToken,
    started: Instant,
) -> (Outcome, String) {
    let TaskProcess {
        mut child,
        group,
        stdin,
        mut stdout,
        mut stderr,
        ..
    } = proc;
    // Dropping this future (e.g. the caller gave up) must not leave the group running.
    let mut guard = KillOnDrop(Some(group));

    let payload = serde_json::to_vec(request).unwrap_or_default();
    let mut stdin = stdin;
    let write_request = async move {
        if let Some(mut stdin) = stdin.take() {
            // A task that exits without reading its input is not an error here.
            let _ = stdin.write_all(&payload).await;
        }
    };
    tokio::pin!(write_request);

    let cap = usize::try_from(spec.max_output).unwrap_or(usize::MAX);
    let mut out: Vec<u8> = Vec::new();
    let mut err_tail = Tail::new(STDERR_TAIL);
    let (mut out_buf, mut err_buf) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut written, mut out_done, mut err_done) = (false, false, false);
    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let mut stopped: Option<Stop> = None;
    let mut kill_at: Option<Instant> = None;
    let mut drain_until: Option<Instant> = None;
    let deadline = spec.timeout.map(|t| started + t);

    let stop = |why: Stop, stopped: &mut Option<Stop>, kill_at: &mut Option<Instant>| {
        if stopped.is_none() {
            *stopped = Some(why);
            group.signal(Signal::SIGTERM);
            *kill_at = Some(Instant::now() + spec.grace_period);
        }
    };

    while !(status.is_some() && out_done && err_done) {
        tokio::select! {
            () = &mut write_request, if !written => written = true,
            read = stdout.read(&mut out_buf), if !out_done => match read {
                Ok(0) | Err(_) => out_done = true,
                Ok(n) => {
                    if stopped.is_none() && out.len() + n > cap {
                        // Keep what fits; reading on only to drain the pipe.
                        out.truncate(cap);
                        stop(Stop::TooLarge, &mut stopped, &mut kill_at);
                    } else if stopped.is_none() {
                        out.extend_from_slice(&out_buf[..n]);
                    }
                }
            },
            read = stderr.read(&mut err_buf), if !err_done => match read {
                Ok(0) | Err(_) => err_done = true,
                Ok(n) => err_tail.push(&err_buf[..n]),
            },
            exited = child.wait(), if status.is_none() => {
                status = Some(exited);
                // The task process is gone: nothing else in its group may outlive
                // it. Strays die now, or at the end of a stop's grace period.
                if kill_at.is_none() {
                    group.signal(Signal::SIGKILL);
                }
                drain_until = Some(kill_at.unwrap_or_else(Instant::now) + DRAIN_LIMIT);
            }
            () = until(deadline), if stopped.is_none() && status.is_none() => {
                stop(Stop::Timeout, &mut stopped, &mut kill_at);
            }
            () = cancel.cancelled(), if stopped.is_none() && status.is_none() => {
                stop(Stop::Cancelled, &mut stopped, &mut kill_at);
            }
            () = until(kill_at) => {
                group.signal(Signal::SIGKILL);
                kill_at = None;
            }
            () = until(drain_until) => {
                tracing::warn!(name = %request.name, "output pipes still open after the task exited; a process left its group");
                break;
            }
        }
    }

    if kill_at.is_some() {
        group.reap_strays(kill_at).await;
    }
    guard.0 = None;
    let stderr = err_tail.take();
    let outcome = match stopped {
        Some(Stop::Timeout) => Outcome::Timeout {
            limit: spec.timeout.unwrap_or_default(),
        },
        Some(Stop::Cancelled) => Outcome::Cancelled,
        Some(Stop::TooLarge) => Outcome::OutputTooLarge {
            limit: spec.max_output,
        },
        None => match status {
            Some(Ok(status)) => judge(status, &out),
            Some(Err(e)) => Outcome::Failed {
                exit: None,
                error: Some(TaskError {
                    kind: "WaitError".to_owned(),
                    message: format!("cannot wait for the task process: {e}"),
                    traceback: None,
                }),
                process_lost: false,
            },
            None => unreachable!("the loop ends only once the process has been reaped"),
        },
    };
    (outcome, stderr)
}

/// The outcome of a process that exited by itself.
fn judge(status: ExitStatus, stdout: &[u8]) -> Outcome {
    if status.success() {
        if stdout.iter().all(u8::is_ascii_whitespace) {
            return Outcome::InvalidOutput {
                message:
                    "the task exited 0 but wrote nothing to stdout (it must write one JSON value)"
                        .to_owned(),
                head: String::new(),
            };
        }
        return match serde_json::from_slice(stdout) {
            Ok(result) => match super::outcome::check_result(&result) {
                Ok(()) => Outcome::Success { result },
                Err(message) => Outcome::InvalidOutput {
                    message,
                    head: process::head(stdout),
                },
            },
            Err(e) => Outcome::InvalidOutput {
                message: format!("stdout is not one JSON value: {e}"),
                head: process::head(stdout),
            },
        };
    }
    // A failing task may explain itself with {"error": {...}} on stdout.
    #[derive(serde::Deserialize)]
    struct Reported {
        error: TaskError,
    }
    let error = serde_json::from_slice::<Reported>(stdout)
        .ok()
        .map(|r| r.error);
    Outcome::Failed {
        exit: Some(process::exit_state(status)),
        error,
        process_lost: false,
    }
}

/// Kills a process group when the supervising future is dropped early.
struct KillOnDrop(Option<process::ProcessGroup>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            group.signal(Signal::SIGKILL);
        }
    }
}
