//! Running tasks: handing waiting tasks out (to a subworker's waiting
//! poll, or to the control plane's own slots), an attempt's end (retry, or
//! the end of the task), and making a final record visible.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::intake::policy_in;
use super::phase::Phase;
use super::{Command, Core};
use crate::control_plane::events::{Forget, TaskChange};
use crate::executor::{Execution, Outcome, TaskRequest, retry};
use crate::protocol::{Attempt, Lease, Status, TaskRecord};

/// The first wait before a task that could not start for a shortage of the
/// host runs again; it doubles with each such attempt, up to the max.
const SHORTAGE_BACKOFF: Duration = Duration::from_millis(200);
const SHORTAGE_BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Core {
    /// Hands out waiting tasks while there is room: in the queue's order
    /// (see [`DispatchQueue::pop_next`]), each to the least-loaded subworker
    /// that defines it and has a free slot, else to the control plane's own
    /// slots. Subworkers come first: the control plane runs a task itself
    /// only when no subworker can take it now.
    ///
    /// [`DispatchQueue::pop_next`]: crate::control_plane::DispatchQueue::pop_next
    pub(super) fn dispatch(&mut self) {
        loop {
            let local_free =
                self.settings.local_tasks && self.tasks.here() < self.settings.concurrency;
            if !local_free && !self.workers.any_free() {
                break;
            }
            let next = {
                let (manifest, retired, tasks, workers) =
                    (&self.manifest, &self.retired, &self.tasks, &self.workers);
                self.queue.pop_next(|name| {
                    let limit =
                        policy_in(manifest, retired, workers, name).and_then(|p| p.max_concurrency);
                    let here = manifest.task(name).is_some() || retired.contains_key(name);
                    limit.is_none_or(|limit| tasks.running(name) < limit)
                        && ((local_free && here) || workers.can_take(name))
                })
            };
            let Some((_, waiting)) = next else { break };
            match self.workers.least_loaded(&waiting.name) {
                Some(worker) => self.lease_to(&worker, &waiting.task_id),
                None => self.start(&waiting.task_id),
            }
        }
        self.flush_polls();
    }

    /// Starts an attempt: the record says when and where, the phase moves
    /// to `phase` (here or leased). Returns what the attempt runs.
    fn begin_attempt(&mut self, task_id: &str, phase: Phase) -> Option<TaskRequest> {
        let active = self.tasks.get_mut(task_id)?;
        let now = Utc::now();
        let worker = match &phase {
            Phase::Leased { worker, lease, .. } => {
                active.record.worker = Some(worker.clone());
                active.record.lease = Some(lease.clone());
                Some(worker.clone())
            }
            _ => {
                active.record.worker = None;
                active.record.lease = None;
                None
            }
        };
        active.record.started_at.get_or_insert(now);
        active.record.attempt_started_at = Some(now);
        let request = request_for(&active.record);
        let change = TaskChange::Started {
            attempt: request.attempt,
            worker,
            waited_ms: 0.0,
        };
        self.tasks.set_phase(task_id, phase, Some(change));
        if let Some(active) = self.tasks.get(task_id) {
            self.persist(&active.record);
        }
        Some(request)
    }

    /// Runs a task here.
    fn start(&mut self, task_id: &str) {
        let Some(spec) = self
            .tasks
            .get(task_id)
            .and_then(|a| {
                self.manifest
                    .task(&a.record.name)
                    .or_else(|| self.retired.get(&a.record.name))
            })
            .map(Arc::clone)
        else {
            return;
        };
        let token = CancellationToken::new();
        let phase = Phase::Here {
            cancel: token.clone(),
            cancelling: false,
        };
        let Some(request) = self.begin_attempt(task_id, phase) else {
            return;
        };
        let (executor, tx) = (Arc::clone(&self.executor), self.tx.clone());
        tokio::spawn(async move {
            let execution = executor.run(&spec, &request, &token).await;
            let _ = tx
                .send(Command::Finished {
                    task_id: request.task_id,
                    execution: Box::new(execution),
                })
                .await;
        });
    }

    /// Hands a task to a subworker's waiting poll, under a new lease.
    fn lease_to(&mut self, worker: &str, task_id: &str) {
        let lease = uuid::Uuid::new_v4().simple().to_string();
        let phase = Phase::Leased {
            lease: lease.clone(),
            worker: worker.to_owned(),
            cancelling: false,
        };
        let Some(request) = self.begin_attempt(task_id, phase) else {
            return;
        };
        tracing::debug!(%task_id, attempt = request.attempt, %worker, %lease, "task leased to a subworker");
        self.workers
            .assign(worker, task_id, Lease { lease, request });
    }

    /// An attempt ran to its end, here or (`worker`) on a subworker: the
    /// task succeeds, is cancelled, waits to retry, or fails.
    pub(super) fn attempt_ended(
        &mut self,
        task_id: &str,
        execution: Execution,
        worker: Option<&str>,
    ) {
        if worker.is_none() {
            self.done_here += 1;
        }
        let draining = self.draining;
        let Some(policy) = self
            .tasks
            .get(task_id)
            .and_then(|a| self.policy(&a.record.name))
        else {
            return;
        };
        let Some(active) = self
            .tasks
            .get_mut(task_id)
            .filter(|a| a.phase().is_running())
        else {
            return;
        };
        let cancelling = active.phase().cancelling();
        active.record.attempt_started_at = None;
        active.record.worker = None;
        active.record.lease = None;
        let run_ms = execution.duration.as_secs_f64() * 1e3;
        let (attempt, outcome) = (execution.attempt, execution.outcome.clone());
        tracing::debug!(
            %task_id,
            name = %active.record.name,
            attempt,
            worker = worker.unwrap_or(&self.settings.worker_id),
            pid = execution.pid,
            outcome = outcome.status(),
            run_ms,
            trace_id = active.record.trace.as_ref().map(|t| t.trace_id.as_str()),
            "attempt ended"
        );
        active.record.attempts.push(Attempt::Ran {
            execution,
            worker: worker.map(str::to_owned),
        });
        // Attempts cut short through no fault of the task, and starts the
        // host had no room for, do not count against `retries`.
        let counted = active.record.counted_attempts();
        let shortages = active.record.transient_attempts();
        let shortage = !draining && !cancelling && outcome.is_transient();
        let retry = !draining
            && !cancelling
            && outcome.is_retryable()
            && retry::retryable(policy.retries, counted);
        match outcome {
            Outcome::Success { result } => self.finish(task_id, Status::Success, result, None),
            Outcome::Cancelled => {
                self.finish(
                    task_id,
                    Status::Cancelled,
                    Value::Null,
                    Some("cancelled".to_owned()),
                );
            }
            // The host or this process ran short (open files, processes,
            // memory): not the task's fault, so it waits and runs again.
            outcome if shortage => {
                let wait = retry::delay(SHORTAGE_BACKOFF, shortages).min(SHORTAGE_BACKOFF_MAX);
                tracing::warn!(%task_id, error = %outcome, "the task could not be started for a shortage of this host; it runs again in {} (this does not count against its retries)", humantime::format_duration(wait));
                self.retry_after(task_id, wait, attempt, &outcome, None);
            }
            outcome if retry => {
                let wait = retry::delay(policy.retry_backoff, counted);
                tracing::info!(%task_id, attempt, error = %outcome, "attempt failed; retrying in {}", humantime::format_duration(wait));
                self.retry_after(task_id, wait, attempt, &outcome, Some(run_ms));
            }
            outcome if cancelling => {
                let error = format!("cancelled; the attempt ended with: {outcome}");
                self.finish(task_id, Status::Cancelled, Value::Null, Some(error));
            }
            outcome => {
                self.finish(
                    task_id,
                    Status::Failure,
                    Value::Null,
                    Some(outcome.to_string()),
                );
            }
        }
    }

    /// Puts a task on a timer for its next attempt.
    fn retry_after(
        &mut self,
        task_id: &str,
        wait: Duration,
        attempt: u32,
        outcome: &Outcome,
        run_ms: Option<f64>,
    ) {
        let timer = self.add_timer(Instant::now() + wait, task_id);
        let Some(active) = self.tasks.get_mut(task_id) else {
            return;
        };
        active.record.error = Some(outcome.to_string());
        let change = TaskChange::Retrying {
            attempt,
            error: outcome.to_string(),
            delay_ms: wait.as_secs_f64() * 1e3,
            run_ms,
        };
        self.tasks
            .set_phase(task_id, Phase::Waiting { timer, retry: true }, Some(change));
        if let Some(active) = self.tasks.get(task_id) {
            self.persist(&active.record);
        }
    }

    /// Ends a task: its final record goes to the journal, and once it is
    /// on disk it is published (see [`Core::publish`]). Nothing else can
    /// happen to the task meanwhile.
    pub(super) fn finish(
        &mut self,
        task_id: &str,
        status: Status,
        result: Value,
        error: Option<String>,
    ) {
        let Some(active) = self.tasks.get(task_id).filter(|a| a.finishing().is_none()) else {
            return;
        };
        let mut record = active.record.clone();
        record.status = status;
        record.result = result;
        record.error = error;
        record.finished_at = Some(Utc::now());
        if let Phase::Waiting { timer, .. } = active.phase() {
            let timer = *timer;
            self.remove_timer(timer, task_id);
        }
        tracing::debug!(%task_id, status = status.as_str(), "task finished");
        self.tasks
            .set_phase(task_id, Phase::Finishing(status), None);
        self.journal_final(record);
    }

    /// Makes a final record visible: to the cache, every waiter and reader,
    /// the callback, and the event stream.
    pub(super) fn publish(&mut self, record: TaskRecord, bytes: usize) {
        if let Some(active) = self.tasks.remove(&record.task_id) {
            for waiter in active.waiters {
                let _ = waiter.send(record.clone());
            }
            for reader in active.readers {
                let _ = reader.send(Some(record.clone()));
            }
            self.tasks.finished(&record, active.record.status);
        }
        self.send_callback(&record);
        if let Some(sink) = &self.settings.records {
            sink.send(&record);
        }
        let evicted = self.results.insert(record, bytes);
        self.forget(evicted, Forget::Evicted);
    }
}

/// What a task's next attempt gets.
pub(super) fn request_for(record: &TaskRecord) -> TaskRequest {
    let attempt = record.next_attempt();
    TaskRequest {
        task_id: record.task_id.clone(),
        name: record.name.clone(),
        args: record.args.clone(),
        kwargs: record.kwargs.clone(),
        attempt,
        traceparent: record
            .trace
            .as_ref()
            .map(|t| t.traceparent_for_attempt(attempt)),
        tracestate: record.trace.as_ref().and_then(|t| t.tracestate.clone()),
    }
}
