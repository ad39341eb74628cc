//! The control plane's core: one task that owns every task's state, the
//! queue, the timers and the result cache, and is driven by [`Command`]s over
//! a channel. Socket handlers never touch state; running tasks report back
//! through the same channel. So there is no lock, and every state change
//! happens in one place, in order.
//!
//! Life of a task: `queued` → `running` → `success` | `failure` | `cancelled`,
//! with `scheduled` (waiting for its eta) before `queued`, and `retrying`
//! (waiting out its backoff) between a failed attempt and the next `queued`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::queue::{DispatchQueue, Waiting};
use super::results::ResultCache;
use crate::executor::{Executor, Outcome, TaskRequest, retry};
use crate::journal::{Change, Done, Journal};
use crate::manifest::{Manifest, Priority, TaskSpec};
use crate::protocol::{CancelReply, Status, TaskRecord};

/// The status of an attempt cut short by a stop of the control plane.
const LOST: &str = "lost";

/// How often expired results are swept from the cache.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A task a client wants run.
#[derive(Debug)]
pub struct NewTask {
    pub task_id: String,
    pub name: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    /// As the message named it; otherwise the task's priority from the manifest.
    pub priority: Option<Priority>,
    pub eta: Option<DateTime<Utc>>,
    pub callback: Option<Value>,
    /// Gets the final record (blocking submits).
    pub waiter: Option<oneshot::Sender<TaskRecord>>,
}

/// What the core is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Accept all the tasks or none (a batch is all or nothing); a task id
    /// that is already known is not run again, its waiter just joins.
    /// Answered with each task's status, in order, once they are on disk.
    Submit {
        tasks: Vec<NewTask>,
        respond: oneshot::Sender<Result<Vec<Status>, String>>,
    },
    Get {
        task_id: String,
        respond: oneshot::Sender<Option<TaskRecord>>,
    },
    Cancel {
        task_id: String,
        respond: oneshot::Sender<CancelReply>,
    },
    Stats {
        respond: oneshot::Sender<Stats>,
    },
    /// Cancel every running task now (a second SIGINT/SIGTERM while draining).
    ForceStop,
    /// An attempt ended (sent by the task that ran it).
    Finished {
        task_id: String,
        execution: Box<crate::executor::Execution>,
    },
}

/// What the journal reports back, from its writer thread, once a write is
/// on disk.
#[derive(Debug)]
enum Journaled {
    /// A submit's new tasks are on disk, and the submitter has been
    /// answered: they are queued. Or they could not be written: they are
    /// dropped, and then the submitter is told (`respond`).
    Accepted {
        task_ids: Vec<String>,
        result: Result<(), String>,
        respond: Option<oneshot::Sender<Result<Vec<Status>, String>>>,
    },
    /// A task's final record is on disk: it is published.
    Finished(Box<TaskRecord>),
    /// A task's callback was delivered (or given up on).
    CallbackSent { task_id: String, delivered: bool },
}

/// Counts for logs and, later, the GUI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub queued: [usize; 4],
    pub waiting_on_timer: usize,
    pub running: usize,
    pub cached_results: usize,
}

/// The core's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub concurrency: usize,
    pub max_queue: usize,
    pub shutdown_grace: Duration,
}

/// A task that has not finished.
#[derive(Debug)]
struct Active {
    record: TaskRecord,
    spec: Arc<TaskSpec>,
    waiters: Vec<oneshot::Sender<TaskRecord>>,
    /// Set while an attempt runs.
    running: Option<CancellationToken>,
    cancel_requested: bool,
    /// Its entry in the timer set while scheduled or retrying.
    timer: Option<(Instant, u64)>,
    /// Ended with this status; its final record is on its way to disk.
    finishing: Option<Status>,
}

pub struct Core {
    manifest: Arc<Manifest>,
    executor: Arc<Executor>,
    settings: Settings,
    active: HashMap<String, Active>,
    queue: DispatchQueue,
    timers: BTreeSet<(Instant, u64, String)>,
    results: ResultCache,
    running: usize,
    running_by_type: HashMap<String, u32>,
    /// For running tasks to report back.
    tx: mpsc::Sender<Command>,
    /// Where every state change is recorded, when durability is on.
    journal: Option<Journal>,
    /// Where the journal's writer reports what is on disk.
    journaled_tx: mpsc::UnboundedSender<Journaled>,
    journaled_rx: Option<mpsc::UnboundedReceiver<Journaled>>,
    callbacks: Arc<crate::transport::Pair0Senders>,
    draining: bool,
    /// Journal writes whose report has not come back yet (submits and
    /// final records): the core does not stop before they have.
    awaiting_disk: usize,
    /// New tasks waiting for their record to be on disk before they queue.
    accepting: usize,
    seq: u64,
}

impl Core {
    pub fn new(
        manifest: Arc<Manifest>,
        executor: Arc<Executor>,
        settings: Settings,
        results: ResultCache,
        tx: mpsc::Sender<Command>,
        journal: Option<Journal>,
    ) -> Core {
        let (journaled_tx, journaled_rx) = mpsc::unbounded_channel();
        Core {
            manifest,
            executor,
            settings,
            active: HashMap::new(),
            queue: DispatchQueue::default(),
            timers: BTreeSet::new(),
            results,
            running: 0,
            running_by_type: HashMap::new(),
            tx,
            journal,
            journaled_tx,
            journaled_rx: Some(journaled_rx),
            callbacks: Arc::new(crate::transport::Pair0Senders::new()),
            draining: false,
            awaiting_disk: 0,
            accepting: 0,
            seq: 0,
        }
    }

    /// Takes back what the journal held when the control plane stopped:
    /// finished tasks are queryable again until their TTL runs out; waiting
    /// ones wait again, in their old order; a task that was running is run
    /// again, its interrupted attempt counted as lost.
    pub fn restore(&mut self, mut records: Vec<TaskRecord>) {
        records.sort_by_key(|r| r.submitted_at);
        let (mut finished, mut requeued, mut forgotten) = (0, 0, Vec::new());
        let mut pending_callbacks = Vec::new();
        let now = Utc::now();
        for mut record in records {
            if record.status.is_final() {
                let finished_at = record.finished_at.unwrap_or(record.submitted_at);
                let age = (now - finished_at).to_std().unwrap_or_default();
                match self.results.ttl().checked_sub(age) {
                    Some(left) if !left.is_zero() => {
                        // A callback still on its way at the stop goes now.
                        if record.callback.is_some() && record.callback_sent.is_none() {
                            pending_callbacks.push(record.clone());
                        }
                        let evicted = self.results.insert_until(record, Instant::now() + left);
                        forgotten.extend(evicted);
                        finished += 1;
                    }
                    _ => forgotten.push(record.task_id),
                }
                continue;
            }
            let Some(spec) = self.manifest.task(&record.name).map(Arc::clone) else {
                let error = format!("task '{}' is no longer in the manifest", record.name);
                record.status = Status::Failure;
                record.error = Some(error);
                record.finished_at = Some(now);
                self.persist(vec![record.clone()]);
                forgotten.extend(self.results.insert(record));
                continue;
            };
            if record.status == Status::Running {
                let lost = u32::try_from(record.attempts.len()).unwrap_or(u32::MAX) + 1;
                record.attempts.push(serde_json::json!({
                    "attempt": lost,
                    "status": LOST,
                    "error": "the control plane stopped while this attempt ran; the task runs again (this attempt does not count against retries)",
                    "started_at": record.attempt_started_at.take().or(record.started_at),
                }));
            }
            let task_id = record.task_id.clone();
            record.status = if record.eta.is_some_and(|eta| eta > now) {
                Status::Scheduled
            } else {
                Status::Queued
            };
            self.persist(vec![record.clone()]);
            self.active.insert(
                task_id.clone(),
                Active {
                    spec,
                    waiters: Vec::new(),
                    running: None,
                    cancel_requested: false,
                    timer: None,
                    finishing: None,
                    record,
                },
            );
            self.place(&task_id);
            requeued += 1;
        }
        self.forget(forgotten);
        for record in &pending_callbacks {
            self.send_callback(record);
        }
        if self.journal.is_some() {
            tracing::info!(
                finished,
                requeued,
                callbacks = pending_callbacks.len(),
                "journal replayed"
            );
        }
    }

    /// Records `records` in the journal (with no wait for the disk: the
    /// writes that must be on disk before something happens carry a [`Done`]).
    fn persist(&self, records: Vec<TaskRecord>) {
        if let Some(journal) = &self.journal {
            let changes = records
                .into_iter()
                .map(|r| Change::Put(Box::new(r)))
                .collect();
            journal.write(changes, None);
        }
    }

    /// Runs `then` once everything handed to the journal so far is on disk
    /// (at once without a journal), on the journal's writer thread. The
    /// writer commits in order, so an empty write completes after every
    /// earlier one.
    fn after_durable(&self, then: impl FnOnce() + Send + 'static) {
        match &self.journal {
            Some(journal) => journal.write(Vec::new(), Some(Box::new(move |_| then()))),
            None => then(),
        }
    }

    /// Drops records from the journal (their results expired or were evicted).
    fn forget(&self, task_ids: Vec<String>) {
        if let (Some(journal), false) = (&self.journal, task_ids.is_empty()) {
            journal.write(task_ids.into_iter().map(Change::Delete).collect(), None);
        }
    }

    /// Runs until `shutdown`, then drains: new submits are refused, waiting
    /// tasks end as failures, running ones get `shutdown_grace` to finish and
    /// are then cancelled. Returns once nothing runs.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let Some(mut journaled) = self.journaled_rx.take() else {
            return;
        };
        let mut reports = Vec::new();
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let mut sweep = tokio::time::interval_at(Instant::now() + SWEEP_EVERY, SWEEP_EVERY);
        let mut kill_at: Option<Instant> = None;
        // Tasks taken back from the journal start now, not at the first event.
        self.dispatch();
        loop {
            let next_timer = self.timers.first().map(|(at, _, _)| *at);
            tokio::select! {
                Some(command) = rx.recv() => self.handle(command),
                // Never closed: the core holds a sender.
                _ = journaled.recv_many(&mut reports, 1024) => {
                    for report in reports.drain(..) {
                        self.on_disk(report);
                    }
                }
                () = sleep_until(next_timer.unwrap_or(far)), if next_timer.is_some() => self.fire_timers(),
                _ = sweep.tick() => {
                    let expired = self.results.sweep();
                    tracing::debug!(swept = expired.len(), kept = self.results.len(), "result cache swept");
                    self.forget(expired);
                }
                () = shutdown.cancelled(), if !self.draining => {
                    kill_at = Some(Instant::now() + self.settings.shutdown_grace);
                    self.drain();
                }
                () = sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() => {
                    kill_at = None;
                    tracing::warn!(running = self.running, "shutdown grace period over; cancelling running tasks");
                    self.cancel_running();
                }
            }
            if self.draining {
                if self.running == 0 && self.awaiting_disk == 0 {
                    break;
                }
            } else {
                self.dispatch();
            }
        }
        // Let go of commands first: nothing waits on a full channel while
        // the journal (dropped with `self`) commits what it holds.
        drop(rx);
    }

    fn handle(&mut self, command: Command) {
        match command {
            // New tasks queue, and the submit is answered, once they are on
            // disk: a task never runs when its submitter was told it failed.
            // A resend waits for the disk too, as its first send may not
            // have got there yet.
            Command::Submit { tasks, respond } => match self.submit(tasks) {
                Ok((fresh, statuses)) => match &self.journal {
                    Some(journal) => {
                        let changes = fresh
                            .iter()
                            .filter_map(|id| self.active.get(id))
                            .map(|a| Change::Put(Box::new(a.record.clone())))
                            .collect();
                        self.awaiting_disk += 1;
                        self.accepting += fresh.len();
                        let tx = self.journaled_tx.clone();
                        // On disk: the submitter is answered from the writer
                        // thread, with no detour through the core.
                        let done: Done = Box::new(move |result| {
                            let respond = match result {
                                Ok(()) => {
                                    let _ = respond.send(Ok(statuses));
                                    None
                                }
                                Err(_) => Some(respond),
                            };
                            let _ = tx.send(Journaled::Accepted {
                                task_ids: fresh,
                                result,
                                respond,
                            });
                        });
                        journal.write(changes, Some(done));
                    }
                    None => {
                        for task_id in &fresh {
                            self.place(task_id);
                        }
                        let _ = respond.send(Ok(statuses));
                    }
                },
                Err(error) => {
                    let _ = respond.send(Err(error));
                }
            },
            Command::Get { task_id, respond } => {
                let _ = respond.send(self.get(&task_id));
            }
            // A cancel is answered once it is durable: a crash right after
            // it must not bring the task back.
            Command::Cancel { task_id, respond } => {
                let reply = self.cancel(&task_id);
                self.after_durable(move || {
                    let _ = respond.send(reply);
                });
            }
            Command::Stats { respond } => {
                let _ = respond.send(Stats {
                    queued: self.queue.lengths(),
                    waiting_on_timer: self.timers.len(),
                    running: self.running,
                    cached_results: self.results.len(),
                });
            }
            Command::Finished { task_id, execution } => self.finished(&task_id, *execution),
            Command::ForceStop => self.cancel_running(),
        }
    }

    /// A journal write is on disk (or failed).
    fn on_disk(&mut self, report: Journaled) {
        if !matches!(report, Journaled::CallbackSent { .. }) {
            self.awaiting_disk = self.awaiting_disk.saturating_sub(1);
        }
        match report {
            Journaled::CallbackSent { task_id, delivered } => {
                if let Some(record) = self.results.update(&task_id, |r| {
                    r.callback_sent = Some(delivered);
                }) {
                    let record = record.clone();
                    self.persist(vec![record]);
                }
            }
            Journaled::Accepted {
                task_ids,
                result,
                respond,
            } => {
                self.accepting = self.accepting.saturating_sub(task_ids.len());
                for task_id in &task_ids {
                    match &result {
                        Ok(()) => self.place(task_id),
                        // Not on disk: the submitter is told, and the task
                        // does not run (unless it was cancelled meanwhile:
                        // that record is on its way).
                        Err(error) => {
                            if self
                                .active
                                .get(task_id)
                                .is_some_and(|a| a.finishing.is_none())
                            {
                                tracing::error!(%task_id, "task refused: its record could not be journaled: {error}");
                                self.active.remove(task_id);
                            }
                        }
                    }
                }
                if let (Some(respond), Err(e)) = (respond, result) {
                    let _ = respond.send(Err(format!("the task could not be journaled: {e}")));
                }
            }
            Journaled::Finished(record) => self.publish(*record),
        }
    }

    /// Tasks waiting for a slot, a timer or the disk: what `--max-queue` bounds.
    fn waiting(&self) -> usize {
        self.queue.len() + self.timers.len() + self.accepting
    }

    /// Puts an accepted task where it waits: on a timer until its eta, or in
    /// the queue.
    fn place(&mut self, task_id: &str) {
        let now = Utc::now();
        let Some(active) = self
            .active
            .get(task_id)
            .filter(|a| a.finishing.is_none() && a.running.is_none() && a.timer.is_none())
        else {
            return;
        };
        match active.record.eta.filter(|eta| *eta > now) {
            Some(eta) => {
                let wait = (eta - now).to_std().unwrap_or_default();
                let timer = self.add_timer(Instant::now() + wait, task_id);
                if let Some(active) = self.active.get_mut(task_id) {
                    active.timer = Some(timer);
                }
            }
            None => {
                let waiting = Waiting {
                    task_id: task_id.to_owned(),
                    name: active.record.name.clone(),
                };
                self.queue.push(active.record.priority, waiting);
            }
        }
    }

    /// Accepts the tasks (all or none); returns the ids of those not known
    /// before, and each task's status.
    fn submit(&mut self, tasks: Vec<NewTask>) -> Result<(Vec<String>, Vec<Status>), String> {
        if self.draining {
            return Err("the control plane is shutting down".to_owned());
        }
        // Check everything first: a batch is accepted whole or not at all.
        let mut ids = std::collections::HashSet::new();
        if let Some(dup) = tasks.iter().find(|t| !ids.insert(t.task_id.as_str())) {
            return Err(format!(
                "task id {} appears twice in one submit",
                dup.task_id
            ));
        }
        let mut fresh = 0;
        for task in &tasks {
            if task.task_id.is_empty() {
                return Err(format!("task '{}' has an empty id", task.name));
            }
            // A known id is a resend of that task, unless it names another one.
            match self.known_name(&task.task_id) {
                Some(name) if name == task.name => continue,
                Some(name) => {
                    return Err(format!(
                        "task id {} is already used by a '{name}' task",
                        task.task_id
                    ));
                }
                None => {}
            }
            if self.manifest.task(&task.name).is_none() {
                return Err(self.manifest.unknown_task(&task.name));
            }
            fresh += 1;
        }
        if self.waiting() + fresh > self.settings.max_queue {
            return Err(format!(
                "queue full: {} tasks waiting, the limit is {} (--max-queue)",
                self.waiting(),
                self.settings.max_queue
            ));
        }
        let (mut fresh, mut statuses) = (Vec::new(), Vec::with_capacity(tasks.len()));
        for task in tasks {
            let (new, status) = self.accept(task);
            fresh.extend(new);
            statuses.push(status);
        }
        Ok((fresh, statuses))
    }

    /// The task name of a known id.
    fn known_name(&mut self, task_id: &str) -> Option<String> {
        match self.active.get(task_id) {
            Some(active) => Some(active.record.name.clone()),
            None => self.results.get(task_id).map(|r| r.name.clone()),
        }
    }

    /// Takes a task in; returns its id when it is new (not a resend), and
    /// its status. The caller has checked that its name is in the manifest.
    fn accept(&mut self, task: NewTask) -> (Option<String>, Status) {
        // A resend of a known id is never run twice: its waiter joins the run.
        if let Some(active) = self.active.get_mut(&task.task_id) {
            tracing::debug!(task_id = %task.task_id, "duplicate submit joins the running task");
            active.waiters.extend(task.waiter);
            return (None, active.record.status);
        }
        if let Some(done) = self.results.get(&task.task_id) {
            tracing::debug!(task_id = %task.task_id, "duplicate submit of a finished task");
            if let Some(waiter) = task.waiter {
                let _ = waiter.send(done.clone());
            }
            return (None, done.status);
        }
        let Some(spec) = self.manifest.task(&task.name).map(Arc::clone) else {
            return (None, Status::Failure);
        };
        let priority = task.priority.unwrap_or(spec.priority);
        let now = Utc::now();
        let future_eta = task.eta.filter(|eta| *eta > now);
        let record = TaskRecord {
            task_id: task.task_id.clone(),
            name: task.name.clone(),
            status: if future_eta.is_some() {
                Status::Scheduled
            } else {
                Status::Queued
            },
            priority,
            args: task.args,
            kwargs: task.kwargs,
            submitted_at: now,
            eta: task.eta,
            started_at: None,
            attempt_started_at: None,
            finished_at: None,
            result: Value::Null,
            error: None,
            attempts: Vec::new(),
            callback: task.callback,
            callback_sent: None,
        };
        let active = Active {
            record,
            spec,
            waiters: task.waiter.into_iter().collect(),
            running: None,
            cancel_requested: false,
            timer: None,
            finishing: None,
        };
        let status = active.record.status;
        tracing::debug!(task_id = %task.task_id, name = %task.name, %priority, status = status.as_str(), "task accepted");
        self.active.insert(task.task_id.clone(), active);
        (Some(task.task_id), status)
    }

    fn add_timer(&mut self, at: Instant, task_id: &str) -> (Instant, u64) {
        self.seq += 1;
        self.timers.insert((at, self.seq, task_id.to_owned()));
        (at, self.seq)
    }

    /// Moves every task whose timer is due into the queue.
    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some((at, _, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let Some((_, _, task_id)) = self.timers.pop_first() else {
                break;
            };
            if let Some(active) = self.active.get_mut(&task_id) {
                active.timer = None;
                active.record.status = Status::Queued;
                self.queue.push(
                    active.record.priority,
                    Waiting {
                        task_id: task_id.clone(),
                        name: active.record.name.clone(),
                    },
                );
            }
        }
    }

    /// Starts tasks while there are free slots (see [`DispatchQueue::pop_next`]
    /// for the order).
    fn dispatch(&mut self) {
        while self.running < self.settings.concurrency {
            let next = {
                let (manifest, by_type) = (&self.manifest, &self.running_by_type);
                self.queue.pop_next(|name| {
                    let limit = manifest.task(name).and_then(|spec| spec.max_concurrency);
                    let running = by_type.get(name).copied().unwrap_or(0);
                    limit.is_none_or(|limit| running < limit)
                })
            };
            let Some((_, waiting)) = next else { break };
            self.start(&waiting.task_id);
        }
    }

    fn start(&mut self, task_id: &str) {
        let Some(active) = self.active.get_mut(task_id) else {
            return;
        };
        let token = CancellationToken::new();
        active.running = Some(token.clone());
        let now = Utc::now();
        active.record.status = Status::Running;
        active.record.started_at.get_or_insert(now);
        active.record.attempt_started_at = Some(now);
        let request = TaskRequest {
            task_id: task_id.to_owned(),
            name: active.record.name.clone(),
            args: active.record.args.clone(),
            kwargs: active.record.kwargs.clone(),
            attempt: u32::try_from(active.record.attempts.len()).unwrap_or(u32::MAX) + 1,
        };
        let spec = Arc::clone(&active.spec);
        let record = active.record.clone();
        self.persist(vec![record]);
        self.running += 1;
        *self.running_by_type.entry(spec.name.clone()).or_default() += 1;
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

    fn finished(&mut self, task_id: &str, execution: crate::executor::Execution) {
        self.running = self.running.saturating_sub(1);
        if let Some(n) = self.running_by_type.get_mut(&execution.name) {
            *n = n.saturating_sub(1);
        }
        let draining = self.draining;
        let Some(active) = self.active.get_mut(task_id) else {
            return;
        };
        active.running = None;
        active.record.attempt_started_at = None;
        active
            .record
            .attempts
            .push(serde_json::to_value(&execution).unwrap_or(Value::Null));
        // An attempt cut short by a stop of the control plane is listed but
        // does not count against `retries`: the task was not at fault.
        let counted = active
            .record
            .attempts
            .iter()
            .filter(|a| a["status"] != LOST)
            .count();
        let counted = u32::try_from(counted).unwrap_or(u32::MAX);
        let cancel_requested = active.cancel_requested;
        let retry = !draining
            && !cancel_requested
            && retry::should_retry(&active.spec, &execution.outcome, counted);
        let backoff = active.spec.retry_backoff;
        match execution.outcome {
            Outcome::Success { result } => self.finish(task_id, Status::Success, result, None),
            Outcome::Cancelled => {
                self.finish(
                    task_id,
                    Status::Cancelled,
                    Value::Null,
                    Some("cancelled".to_owned()),
                );
            }
            outcome if retry => {
                let wait = retry::delay(backoff, counted);
                tracing::info!(%task_id, attempt = execution.attempt, error = %outcome, "attempt failed; retrying in {}", humantime::format_duration(wait));
                let timer = self.add_timer(Instant::now() + wait, task_id);
                if let Some(active) = self.active.get_mut(task_id) {
                    active.record.status = Status::Retrying;
                    active.record.error = Some(outcome.to_string());
                    active.timer = Some(timer);
                    let record = active.record.clone();
                    self.persist(vec![record]);
                }
            }
            outcome if cancel_requested => {
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

    /// Ends a task. Its final record goes to the journal first; only once it
    /// is on disk is it published (cache, waiters, callbacks). Until then the
    /// task answers queries as it was: a result seen before a crash could
    /// otherwise be run again after it and reported differently.
    fn finish(&mut self, task_id: &str, status: Status, result: Value, error: Option<String>) {
        let Some(active) = self
            .active
            .get_mut(task_id)
            .filter(|a| a.finishing.is_none())
        else {
            return;
        };
        active.finishing = Some(status);
        let timer = active.timer.take();
        let mut record = active.record.clone();
        record.status = status;
        record.result = result;
        record.error = error;
        record.finished_at = Some(Utc::now());
        if let Some((at, seq)) = timer {
            self.timers.remove(&(at, seq, task_id.to_owned()));
        }
        tracing::debug!(%task_id, status = status.as_str(), "task finished");
        self.awaiting_disk += 1;
        match &self.journal {
            Some(journal) => {
                let tx = self.journaled_tx.clone();
                let put = Change::Put(Box::new(record.clone()));
                let done: Done = Box::new(move |result| {
                    if let Err(e) = result {
                        tracing::error!(task_id = %record.task_id, "result not journaled: {e}");
                    }
                    let _ = tx.send(Journaled::Finished(Box::new(record)));
                });
                journal.write(vec![put], Some(done));
            }
            None => self.on_disk(Journaled::Finished(Box::new(record))),
        }
    }

    /// Makes a final record visible: to the cache, every waiter and the callback.
    fn publish(&mut self, record: TaskRecord) {
        let waiters = self
            .active
            .remove(&record.task_id)
            .map(|active| active.waiters)
            .unwrap_or_default();
        for waiter in waiters {
            let _ = waiter.send(record.clone());
        }
        self.send_callback(&record);
        let evicted = self.results.insert(record);
        self.forget(evicted.into_iter().collect());
    }

    /// Sends a finished task's callback, if it has one; how it went comes
    /// back as [`Journaled::CallbackSent`].
    fn send_callback(&self, record: &TaskRecord) {
        let (tx, task_id) = (self.journaled_tx.clone(), record.task_id.clone());
        super::callbacks::deliver(&self.callbacks, record, move |delivered| {
            let _ = tx.send(Journaled::CallbackSent { task_id, delivered });
        });
    }

    fn get(&mut self, task_id: &str) -> Option<TaskRecord> {
        match self.active.get(task_id) {
            Some(active) => Some(active.record.clone()),
            None => self.results.get(task_id).cloned(),
        }
    }

    fn cancel(&mut self, task_id: &str) -> CancelReply {
        let reply = |cancelled: bool, status: Status, error: Option<String>| CancelReply {
            cancelled,
            task_id: task_id.to_owned(),
            status: Some(status),
            error,
        };
        if let Some(active) = self.active.get_mut(task_id) {
            if let Some(status) = active.finishing {
                // Already ended; its record is on its way to disk.
                return match status {
                    Status::Cancelled => reply(true, status, None),
                    _ => reply(
                        false,
                        status,
                        Some(format!(
                            "task {task_id} already finished ({})",
                            status.as_str()
                        )),
                    ),
                };
            }
            if let Some(token) = &active.running {
                // Its process group is stopped; the attempt then ends cancelled.
                // The journal says cancelled at once, so that a replay after a
                // crash does not run it again.
                active.cancel_requested = true;
                token.cancel();
                let mut cancelled = active.record.clone();
                cancelled.status = Status::Cancelled;
                cancelled.error = Some("cancelled".to_owned());
                cancelled.finished_at = Some(Utc::now());
                self.persist(vec![cancelled]);
                return reply(true, Status::Running, None);
            }
            self.queue.remove(task_id);
            self.finish(
                task_id,
                Status::Cancelled,
                Value::Null,
                Some("cancelled".to_owned()),
            );
            return reply(true, Status::Cancelled, None);
        }
        match self.results.get(task_id) {
            // Cancelling a cancelled task again is not an error.
            Some(done) if done.status == Status::Cancelled => reply(true, Status::Cancelled, None),
            Some(done) => reply(
                false,
                done.status,
                Some(format!(
                    "task {task_id} already finished ({})",
                    done.status.as_str()
                )),
            ),
            None => CancelReply {
                cancelled: false,
                task_id: task_id.to_owned(),
                status: None,
                error: Some(format!("task {task_id} not found")),
            },
        }
    }

    /// Stops every running task's process group; each then ends cancelled.
    fn cancel_running(&mut self) {
        for task in self.active.values_mut() {
            if let Some(token) = &task.running {
                task.cancel_requested = true;
                token.cancel();
            }
        }
    }

    /// Stops accepting. Without a journal, every task that is not running
    /// ends as a failure; with one, waiting tasks stay in it and run after
    /// the next start (their blocking submitters get the task as it stands).
    fn drain(&mut self) {
        self.draining = true;
        if self.journal.is_some() {
            tracing::info!(
                running = self.running,
                waiting = self.waiting(),
                "shutting down: no new tasks; waiting tasks stay in the journal, running ones may finish"
            );
            for active in self.active.values_mut() {
                if active.running.is_none() && active.finishing.is_none() {
                    let mut record = active.record.clone();
                    record.error = Some(format!(
                        "the control plane is shutting down; the task stays {} in the journal and runs after the next start",
                        record.status.as_str()
                    ));
                    for waiter in active.waiters.drain(..) {
                        let _ = waiter.send(record.clone());
                    }
                }
            }
            return;
        }
        let waiting: Vec<String> = self
            .queue
            .drain()
            .into_iter()
            .map(|w| w.task_id)
            .chain(self.timers.iter().map(|(_, _, id)| id.clone()))
            .collect();
        tracing::info!(
            running = self.running,
            waiting = waiting.len(),
            "shutting down: no new tasks; waiting tasks end, running ones may finish"
        );
        for task_id in waiting {
            let error = match self.active.get(&task_id) {
                Some(a) if a.record.status == Status::Retrying => format!(
                    "the control plane shut down before the next attempt; the last one {}",
                    a.record.error.as_deref().unwrap_or("failed")
                ),
                _ => "the control plane shut down before the task ran".to_owned(),
            };
            self.finish(&task_id, Status::Failure, Value::Null, Some(error));
        }
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("active", &self.active.len())
            .field("queued", &self.queue.len())
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}
