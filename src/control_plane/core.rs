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
use super::workers::{self, Held, State, Worker, Workers};
use crate::executor::{Execution, Executor, Outcome, TaskRequest, retry};
use crate::journal::{Change, Commit, Done, Journal};
use crate::manifest::{Manifest, Priority};
use crate::protocol::{
    Applied, CancelReply, Hello, Lease, Poll, PollReply, Registered, Registration, Status,
    TaskRecord, WorkerInfo,
};

/// The status of an attempt cut short by a stop of the control plane or
/// the loss of its subworker; it does not count against `retries`.
const LOST: &str = "lost";

/// The status of an attempt a stopping subworker gave back unfinished; it
/// does not count against `retries` either.
const HANDED_BACK: &str = "handed_back";

/// The first wait before a task that could not start for a shortage of the
/// host runs again; it doubles with each such attempt, up to the max.
const SHORTAGE_BACKOFF: Duration = Duration::from_millis(200);
const SHORTAGE_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How often held polls and the workers' heartbeats are checked.
const WORKER_TICK: Duration = Duration::from_millis(100);

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
        execution: Box<Execution>,
    },
    /// A subworker registers (see [`super::workers`]).
    Register {
        registration: Box<Registration>,
        respond: oneshot::Sender<Registered>,
    },
    /// A subworker's heartbeat, asking for work.
    Poll {
        poll: Poll,
        respond: oneshot::Sender<PollReply>,
    },
    /// A subworker reports a leased task's run.
    WorkResult {
        hello: Hello,
        lease: String,
        execution: Box<Execution>,
        respond: oneshot::Sender<Applied>,
    },
    /// A stopping subworker hands a leased task back unfinished.
    Release {
        hello: Hello,
        lease: String,
        reason: String,
        respond: oneshot::Sender<Applied>,
    },
    /// A subworker leaves.
    Deregister {
        hello: Hello,
        respond: oneshot::Sender<Applied>,
    },
    /// The workers, the control plane's own slots first.
    Workers {
        respond: oneshot::Sender<Vec<WorkerInfo>>,
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
    /// A task's final record (of `bytes` encoded) is on disk: it is published.
    Finished {
        record: Box<TaskRecord>,
        bytes: usize,
    },
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
    /// The bytes the cached results take, as encoded.
    pub cached_bytes: usize,
    /// Results pushed out of the cache by its bounds since the start.
    pub cache_evictions: u64,
}

/// The core's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Tasks the control plane runs itself at once.
    pub concurrency: usize,
    /// Whether it runs tasks itself at all (`--no-local-tasks`: no).
    pub local_tasks: bool,
    /// Its id, in the worker list.
    pub worker_id: String,
    pub max_queue: usize,
    pub shutdown_grace: Duration,
}

/// A task that has not finished.
#[derive(Debug)]
struct Active {
    record: TaskRecord,
    waiters: Vec<oneshot::Sender<TaskRecord>>,
    /// Queries that came while its final record was on its way to disk.
    readers: Vec<oneshot::Sender<Option<TaskRecord>>>,
    /// Set while an attempt runs here.
    running: Option<CancellationToken>,
    /// Set while an attempt runs on a subworker: its lease.
    lease: Option<String>,
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
    /// Attempts running here.
    running: usize,
    /// Attempts running here or on subworkers, by task type.
    running_by_type: HashMap<String, u32>,
    /// Tasks run here to the end.
    done_here: u64,
    workers: Workers,
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

impl Active {
    fn new(record: TaskRecord, waiters: Vec<oneshot::Sender<TaskRecord>>) -> Active {
        Active {
            record,
            waiters,
            readers: Vec::new(),
            running: None,
            lease: None,
            cancel_requested: false,
            timer: None,
            finishing: None,
        }
    }

    fn is_running(&self) -> bool {
        self.running.is_some() || self.lease.is_some()
    }

    /// Attempts that count against `retries`.
    fn counted_attempts(&self) -> u32 {
        let counted = self
            .record
            .attempts
            .iter()
            .filter(|a| a["status"] != LOST && a["status"] != HANDED_BACK && a["transient"] != true)
            .count();
        u32::try_from(counted).unwrap_or(u32::MAX)
    }

    /// Attempts that could not start for a shortage of the host.
    fn transient_attempts(&self) -> u32 {
        let n = self
            .record
            .attempts
            .iter()
            .filter(|a| a["transient"] == true)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// What scheduling needs to know about a task type, from the control
/// plane's manifest or else from a subworker that defines it.
#[derive(Debug, Clone, Copy)]
struct Policy {
    priority: Priority,
    retries: u32,
    retry_backoff: Duration,
    max_concurrency: Option<u32>,
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
            done_here: 0,
            workers: Workers::default(),
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
    ///
    /// `killed` names the tasks whose processes an earlier control plane
    /// left running (found and killed at this start): a task among them
    /// that the journal still has waiting had started within the last
    /// commit window before a crash, and that run is listed as lost too.
    pub fn restore(
        &mut self,
        replay: crate::journal::Replay,
        killed: &std::collections::BTreeSet<String>,
    ) {
        let quarantined = replay.quarantined.len();
        let (mut finished, mut requeued, mut forgotten) = (0, 0, Vec::new());
        let mut pending_callbacks = Vec::new();
        let now = Utc::now();
        // Oldest submit first: waiting tasks keep their old order.
        for (mut record, bytes) in replay.records() {
            if record.status.is_final() {
                let finished_at = record.finished_at.unwrap_or(record.submitted_at);
                let age = (now - finished_at).to_std().unwrap_or_default();
                match self.results.ttl().checked_sub(age) {
                    Some(left) if !left.is_zero() => {
                        // A callback still on its way at the stop goes now.
                        if record.callback.is_some() && record.callback_sent.is_none() {
                            pending_callbacks.push(record.clone());
                        }
                        let evicted =
                            self.results
                                .insert_until(record, bytes, Instant::now() + left);
                        forgotten.extend(evicted);
                        finished += 1;
                    }
                    _ => forgotten.push(record.task_id),
                }
                continue;
            }
            if self.manifest.task(&record.name).is_none() {
                tracing::warn!(task_id = %record.task_id, name = %record.name, "task type not in this manifest: the task waits for a subworker that defines it");
            }
            // Running on a subworker: the lease stays that worker's if it
            // registers again in time, holding it (see `restore_lease`).
            if record.status == Status::Running
                && let (Some(worker), Some(lease)) = (record.worker.clone(), record.lease.clone())
            {
                self.restore_lease(record, &worker, &lease);
                requeued += 1;
                continue;
            }
            if record.status == Status::Running {
                let started = record.attempt_started_at.take().or(record.started_at);
                let attempt = cut_short(
                    &record,
                    LOST,
                    "the control plane stopped while this attempt ran",
                    None,
                    started,
                );
                record.attempts.push(attempt);
            } else if killed.contains(&record.task_id) {
                let attempt = cut_short(
                    &record,
                    LOST,
                    "the control plane stopped while this attempt ran, before its start reached the journal (its process was found and killed at the restart)",
                    None,
                    None,
                );
                record.attempts.push(attempt);
            }
            let task_id = record.task_id.clone();
            record.status = if record.eta.is_some_and(|eta| eta > now) {
                Status::Scheduled
            } else {
                Status::Queued
            };
            persist(self.journal.as_ref(), &record);
            self.active
                .insert(task_id.clone(), Active::new(record, Vec::new()));
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
                quarantined,
                callbacks = pending_callbacks.len(),
                "journal replayed"
            );
        }
    }

    /// Commits what the journal holds now rather than soon: somebody has
    /// come to wait on a write that nobody waited on.
    fn urge(&self) {
        if let Some(journal) = &self.journal {
            journal.write(Vec::new(), Commit::Now, None);
        }
    }

    /// Runs `then` once everything handed to the journal so far is on disk
    /// (at once without a journal), on the journal's writer thread. The
    /// writer commits in order, so an empty write completes after every
    /// earlier one.
    fn after_durable(&self, then: impl FnOnce() + Send + 'static) {
        match &self.journal {
            Some(journal) => {
                journal.write(Vec::new(), Commit::Now, Some(Box::new(move |_| then())))
            }
            None => then(),
        }
    }

    /// Drops records from the journal (their results expired or were evicted).
    fn forget(&self, task_ids: Vec<String>) {
        if let (Some(journal), false) = (&self.journal, task_ids.is_empty()) {
            journal.write(
                task_ids.into_iter().map(Change::Delete).collect(),
                Commit::Soon,
                None,
            );
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
        let mut worker_tick = tokio::time::interval(WORKER_TICK);
        worker_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                _ = worker_tick.tick() => self.check_workers(),
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
                // Tasks on subworkers are waited for too: their results
                // still come in while the management socket serves.
                if self.running == 0 && self.workers.leases.is_empty() && self.awaiting_disk == 0 {
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
                            .map(|a| Change::put(&a.record))
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
                        journal.write(changes, Commit::Now, Some(done));
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
            Command::Get { task_id, respond } => match self.active.get_mut(&task_id) {
                // Ended, on its way to disk: answered once it is there.
                Some(active) if active.finishing.is_some() => {
                    active.readers.push(respond);
                    self.urge();
                }
                _ => {
                    let _ = respond.send(self.get(&task_id));
                }
            },
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
                    cached_bytes: self.results.bytes(),
                    cache_evictions: self.results.evictions(),
                });
            }
            Command::Finished { task_id, execution } => {
                self.finished(&task_id, *execution, None);
            }
            Command::Register {
                registration,
                respond,
            } => {
                let _ = respond.send(self.register(*registration));
            }
            Command::Poll { poll, respond } => self.poll(poll, respond),
            Command::WorkResult {
                hello,
                lease,
                execution,
                respond,
            } => {
                let _ = respond.send(self.work_result(&hello, &lease, *execution));
            }
            Command::Release {
                hello,
                lease,
                reason,
                respond,
            } => {
                let _ = respond.send(self.release(&hello, &lease, &reason));
            }
            Command::Deregister { hello, respond } => {
                let _ = respond.send(self.deregister(&hello));
            }
            Command::Workers { respond } => {
                let _ = respond.send(self.worker_list());
            }
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
                    persist(self.journal.as_ref(), record);
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
            Journaled::Finished { record, bytes } => self.publish(*record, bytes),
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
            .filter(|a| a.finishing.is_none() && !a.is_running() && a.timer.is_none())
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
            if self.policy(&task.name).is_none() {
                return Err(self.unknown_task(&task.name));
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
            let (finishing, status) = (active.finishing.is_some(), active.record.status);
            active.waiters.extend(task.waiter);
            if finishing {
                self.urge();
            }
            return (None, status);
        }
        if let Some(done) = self.results.get(&task.task_id) {
            tracing::debug!(task_id = %task.task_id, "duplicate submit of a finished task");
            if let Some(waiter) = task.waiter {
                let _ = waiter.send(done.clone());
            }
            return (None, done.status);
        }
        let Some(policy) = self.policy(&task.name) else {
            return (None, Status::Failure);
        };
        let priority = task.priority.unwrap_or(policy.priority);
        let now = Utc::now();
        let status = if task.eta.is_some_and(|eta| eta > now) {
            Status::Scheduled
        } else {
            Status::Queued
        };
        let record = TaskRecord {
            args: task.args,
            kwargs: task.kwargs,
            submitted_at: now,
            eta: task.eta,
            callback: task.callback,
            ..TaskRecord::new(task.task_id.clone(), task.name.clone(), priority, status)
        };
        let active = Active::new(record, task.waiter.into_iter().collect());
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

    /// Hands out waiting tasks while there is room: in the queue's order
    /// (see [`DispatchQueue::pop_next`]), each to the least-loaded subworker
    /// that defines it and has a free slot, else to the control plane's own
    /// slots. Subworkers come first: the control plane runs a task itself
    /// only when no subworker can take it now.
    fn dispatch(&mut self) {
        loop {
            let local_free = self.settings.local_tasks && self.running < self.settings.concurrency;
            if !local_free && !self.workers.any_free() {
                break;
            }
            let next = {
                let (manifest, by_type, workers) =
                    (&self.manifest, &self.running_by_type, &self.workers);
                let policy = |name: &str| Self::policy_in(manifest, workers, name);
                self.queue.pop_next(|name| {
                    let limit = policy(name).and_then(|p| p.max_concurrency);
                    let running = by_type.get(name).copied().unwrap_or(0);
                    limit.is_none_or(|limit| running < limit)
                        && ((local_free && manifest.task(name).is_some()) || workers.can_take(name))
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

    /// Sends the poll replies that have work or cancels in them; a lease
    /// whose poll was gone never reached its worker, and is queued again.
    fn flush_polls(&mut self) {
        for lease in self.workers.flush() {
            self.lose_lease(&lease, None);
        }
    }

    /// The scheduling policy of a task type, if anyone defines it.
    fn policy(&self, name: &str) -> Option<Policy> {
        Self::policy_in(&self.manifest, &self.workers, name)
    }

    fn policy_in(manifest: &Manifest, workers: &Workers, name: &str) -> Option<Policy> {
        match manifest.task(name) {
            Some(spec) => Some(Policy {
                priority: spec.priority,
                retries: spec.retries,
                retry_backoff: spec.retry_backoff,
                max_concurrency: spec.max_concurrency,
            }),
            None => workers.offer(name).map(|offer| Policy {
                priority: offer.priority,
                retries: offer.retries,
                retry_backoff: Duration::from_millis(offer.retry_backoff_ms),
                max_concurrency: offer.max_concurrency,
            }),
        }
    }

    fn unknown_task(&self, name: &str) -> String {
        let theirs: Vec<String> = self
            .workers
            .names()
            .into_iter()
            .filter(|n| self.manifest.task(n).is_none())
            .collect();
        let ours = self.manifest.unknown_task(name);
        if theirs.is_empty() {
            ours
        } else {
            format!("{ours}; from subworkers: {}", theirs.join(", "))
        }
    }

    /// Marks a task's attempt as started (here, or on `worker` under `lease`).
    fn mark_started(&mut self, task_id: &str, on: Option<(&str, &str)>) -> Option<TaskRequest> {
        let active = self.active.get_mut(task_id)?;
        let now = Utc::now();
        active.record.status = Status::Running;
        active.record.started_at.get_or_insert(now);
        active.record.attempt_started_at = Some(now);
        active.record.worker = on.map(|(worker, _)| worker.to_owned());
        active.record.lease = on.map(|(_, lease)| lease.to_owned());
        let request = request_for(&active.record);
        *self
            .running_by_type
            .entry(active.record.name.clone())
            .or_default() += 1;
        persist(self.journal.as_ref(), &active.record);
        Some(request)
    }

    /// Runs a task here.
    fn start(&mut self, task_id: &str) {
        let Some(spec) = self
            .active
            .get(task_id)
            .and_then(|a| self.manifest.task(&a.record.name))
            .map(Arc::clone)
        else {
            return;
        };
        let Some(request) = self.mark_started(task_id, None) else {
            return;
        };
        let token = CancellationToken::new();
        if let Some(active) = self.active.get_mut(task_id) {
            active.running = Some(token.clone());
        }
        self.running += 1;
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
        let Some(request) = self.mark_started(task_id, Some((worker, &lease))) else {
            return;
        };
        if let Some(active) = self.active.get_mut(task_id) {
            active.lease = Some(lease.clone());
        }
        tracing::debug!(%task_id, %worker, %lease, "task leased to a subworker");
        self.workers
            .assign(worker, task_id, Lease { lease, request });
    }

    /// An attempt ran to its end, here or (`worker`) on a subworker.
    fn finished(&mut self, task_id: &str, execution: Execution, worker: Option<&str>) {
        if worker.is_none() {
            self.running = self.running.saturating_sub(1);
            self.done_here += 1;
        }
        if let Some(n) = self.running_by_type.get_mut(&execution.name) {
            *n = n.saturating_sub(1);
        }
        let draining = self.draining;
        let Some(policy) = self
            .active
            .get(task_id)
            .and_then(|a| self.policy(&a.record.name))
        else {
            return;
        };
        let Some(active) = self.active.get_mut(task_id) else {
            return;
        };
        active.running = None;
        active.lease = None;
        active.record.attempt_started_at = None;
        active.record.worker = None;
        active.record.lease = None;
        let mut attempt = serde_json::to_value(&execution).unwrap_or(Value::Null);
        if let (Some(worker), Some(fields)) = (worker, attempt.as_object_mut()) {
            fields.insert("worker".to_owned(), Value::from(worker));
        }
        active.record.attempts.push(attempt);
        // An attempt cut short by a stop of the control plane is listed but
        // does not count against `retries`: the task was not at fault.
        let counted = active.counted_attempts();
        let cancel_requested = active.cancel_requested;
        let retry = !draining
            && !cancel_requested
            && execution.outcome.is_retryable()
            && retry::retryable(policy.retries, counted);
        let backoff = policy.retry_backoff;
        let shortage = !draining && !cancel_requested && execution.outcome.is_transient();
        let shortages = active.transient_attempts();
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
            // The host or this process ran short (open files, processes,
            // memory): not the task's fault, so it waits and runs again,
            // not counting against its retries.
            outcome if shortage => {
                let wait = retry::delay(SHORTAGE_BACKOFF, shortages).min(SHORTAGE_BACKOFF_MAX);
                tracing::warn!(%task_id, error = %outcome, "the task could not be started for a shortage of this host; it runs again in {} (this does not count against its retries)", humantime::format_duration(wait));
                let timer = self.add_timer(Instant::now() + wait, task_id);
                if let Some(active) = self.active.get_mut(task_id) {
                    active.record.status = Status::Retrying;
                    active.record.error = Some(outcome.to_string());
                    active.timer = Some(timer);
                    persist(self.journal.as_ref(), &active.record);
                }
            }
            outcome if retry => {
                let wait = retry::delay(backoff, counted);
                tracing::info!(%task_id, attempt = execution.attempt, error = %outcome, "attempt failed; retrying in {}", humantime::format_duration(wait));
                let timer = self.add_timer(Instant::now() + wait, task_id);
                if let Some(active) = self.active.get_mut(task_id) {
                    active.record.status = Status::Retrying;
                    active.record.error = Some(outcome.to_string());
                    active.timer = Some(timer);
                    persist(self.journal.as_ref(), &active.record);
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
    /// is on disk is it published (cache, waiters, callbacks). A query meanwhile
    /// is answered then too: a result seen before a crash could otherwise be
    /// run again after it and reported differently. The record is committed
    /// at once when somebody waits on it (a blocking submitter, a callback),
    /// else soon (see [`Commit`]), until somebody asks.
    fn finish(&mut self, task_id: &str, status: Status, result: Value, error: Option<String>) {
        let Some(active) = self
            .active
            .get_mut(task_id)
            .filter(|a| a.finishing.is_none())
        else {
            return;
        };
        active.finishing = Some(status);
        let when = if active.waiters.is_empty() && active.record.callback.is_none() {
            Commit::Soon
        } else {
            Commit::Now
        };
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
                let put = Change::put(&record);
                let bytes = put.size();
                // Those waiting now are answered from the writer thread, with
                // no detour through the core; later ones when it publishes.
                let waiters = std::mem::take(&mut active.waiters);
                let done: Done = Box::new(move |result| {
                    if let Err(e) = result {
                        tracing::error!(task_id = %record.task_id, "result not journaled: {e}");
                    }
                    for waiter in waiters {
                        let _ = waiter.send(record.clone());
                    }
                    let _ = tx.send(Journaled::Finished {
                        record: Box::new(record),
                        bytes,
                    });
                });
                journal.write(vec![put], when, Some(done));
            }
            None => {
                let bytes = super::results::encoded_size(&record);
                self.on_disk(Journaled::Finished {
                    record: Box::new(record),
                    bytes,
                });
            }
        }
    }

    /// Makes a final record visible: to the cache, every waiter and the callback.
    fn publish(&mut self, record: TaskRecord, bytes: usize) {
        if let Some(active) = self.active.remove(&record.task_id) {
            for waiter in active.waiters {
                let _ = waiter.send(record.clone());
            }
            for reader in active.readers {
                let _ = reader.send(Some(record.clone()));
            }
        }
        self.send_callback(&record);
        let evicted = self.results.insert(record, bytes);
        self.forget(evicted);
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
            if active.is_running() {
                // Its process group is stopped (here, or by its subworker,
                // told in the reply to its poll); the attempt then ends
                // cancelled. The journal says cancelled at once, so that a
                // replay after a crash does not run it again.
                active.cancel_requested = true;
                if let Some(token) = &active.running {
                    token.cancel();
                }
                if let Some(lease) = &active.lease {
                    self.workers.cancel(lease);
                }
                let mut cancelled = active.record.clone();
                cancelled.status = Status::Cancelled;
                cancelled.error = Some("cancelled".to_owned());
                cancelled.finished_at = Some(Utc::now());
                persist(self.journal.as_ref(), &cancelled);
                self.flush_polls();
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

    /// A task that ran on `worker` under `lease` when the control plane
    /// stopped: the lease stays the worker's, which has [`REJOIN_GRACE`]
    /// to register again and claim it; otherwise the task runs elsewhere.
    ///
    /// [`REJOIN_GRACE`]: workers::REJOIN_GRACE
    fn restore_lease(&mut self, record: TaskRecord, worker_id: &str, lease: &str) {
        let task_id = record.task_id.clone();
        *self.running_by_type.entry(record.name.clone()).or_default() += 1;
        let request = Lease {
            lease: lease.to_owned(),
            request: request_for(&record),
        };
        let mut active = Active::new(record, Vec::new());
        active.lease = Some(lease.to_owned());
        self.active.insert(task_id.clone(), active);
        let worker = self
            .workers
            .by_id
            .entry(worker_id.to_owned())
            .or_insert_with(|| {
                let mut worker = Worker::new(
                    worker_id.to_owned(),
                    None,
                    "(not registered since the restart)".to_owned(),
                    0,
                    Default::default(),
                );
                // Silent for INACTIVE_AFTER from this moment + the grace.
                worker.last_seen += workers::REJOIN_GRACE - workers::INACTIVE_AFTER;
                worker
            });
        worker.leases.insert(lease.to_owned());
        self.workers.leases.insert(
            lease.to_owned(),
            workers::LeaseInfo {
                worker_id: worker_id.to_owned(),
                task_id,
                issued_in: 0,
                lease: request,
            },
        );
    }

    /// A subworker registers: new, back after a silence, or the same one
    /// again after a restart of the control plane (its leases stay its).
    fn register(&mut self, reg: Registration) -> Registered {
        let id = reg.hello.worker_id.clone();
        let refuse = |error: String| Registered {
            registered: false,
            error: Some(error),
            warnings: Vec::new(),
            cancel: Vec::new(),
        };
        if let Err(e) = crate::protocol::check_id("worker id", &id) {
            return refuse(e);
        }
        if let Some(old) = self.workers.by_id.get(&id)
            && old.state != State::Inactive
            && old
                .session
                .as_ref()
                .is_some_and(|s| *s != reg.hello.session)
        {
            return refuse(format!(
                "worker id '{id}' is taken by another running subworker ({}, last heard from {} ago); give each subworker its own --worker-id",
                old.address,
                humantime::format_duration(Duration::from_millis(
                    u64::try_from(old.last_seen.elapsed().as_millis()).unwrap_or(u64::MAX)
                )),
            ));
        }
        // Leases: kept where both sides know them; the worker's own that the
        // control plane no longer gives it are stopped; the control plane's
        // that the worker does not hold were lost with its process.
        let claimed: std::collections::HashSet<&String> = reg.running.iter().collect();
        let (held, done, registered_at) = match self.workers.by_id.get(&id) {
            Some(old) => (
                old.leases.iter().cloned().collect::<Vec<_>>(),
                old.done,
                old.registered_at
                    .filter(|_| old.session.as_ref() == Some(&reg.hello.session)),
            ),
            None => (Vec::new(), 0, None),
        };
        for lease in held.iter().filter(|l| !claimed.contains(l)) {
            self.lose_lease(
                lease,
                Some(format!(
                    "subworker '{id}' came back without this task (it restarted)"
                )),
            );
        }
        let cancel: Vec<String> = reg
            .running
            .iter()
            .filter(|l| !held.contains(l))
            .cloned()
            .collect();
        let warnings = self.definition_warnings(&id, &reg.tasks);
        for warning in &warnings {
            tracing::warn!(worker = %id, "{warning}");
        }
        let now = Utc::now();
        let leases = self
            .workers
            .by_id
            .remove(&id)
            .map(|old| old.leases)
            .unwrap_or_default();
        tracing::info!(worker = %id, address = %reg.address, capacity = reg.capacity, tasks = reg.tasks.len(), kept = leases.len(), "subworker registered");
        let mut worker = Worker::new(
            id.clone(),
            Some(reg.hello.session),
            reg.address,
            reg.capacity,
            reg.tasks,
        );
        worker.last_seen_at = Some(now);
        worker.registered_at = registered_at.or(Some(now));
        worker.leases = leases;
        worker.done = done;
        worker.warnings = warnings.clone();
        self.workers.by_id.insert(id, worker);
        Registered {
            registered: true,
            error: None,
            warnings,
            cancel,
        }
    }

    /// Tasks `worker` defines differently from the control plane's
    /// manifest or from another worker.
    fn definition_warnings(
        &self,
        worker: &str,
        offers: &std::collections::BTreeMap<String, crate::protocol::TaskOffer>,
    ) -> Vec<String> {
        let mut warnings = Vec::new();
        for (name, offer) in offers {
            if let Some(spec) = self.manifest.task(name) {
                let ours = spec.digest(&self.manifest.dir);
                if ours != offer.digest {
                    warnings.push(format!(
                        "task '{name}' is defined differently on subworker '{worker}' (digest {}) than on the control plane (digest {ours})",
                        offer.digest
                    ));
                }
            }
            for other in self.workers.by_id.values().filter(|w| w.id != worker) {
                if let Some(theirs) = other.offers.get(name)
                    && theirs.digest != offer.digest
                {
                    warnings.push(format!(
                        "task '{name}' is defined differently on subworker '{worker}' (digest {}) than on subworker '{}' (digest {})",
                        offer.digest, other.id, theirs.digest
                    ));
                }
            }
        }
        warnings
    }

    /// A subworker's heartbeat and request for work: answered at once when
    /// there is something to say, else held (see [`super::workers`]).
    fn poll(&mut self, poll: Poll, respond: oneshot::Sender<PollReply>) {
        let Some(worker) = self
            .workers
            .by_id
            .get_mut(&poll.hello.worker_id)
            .filter(|w| w.state != State::Inactive)
            .filter(|w| w.session.as_ref() == Some(&poll.hello.session))
        else {
            let _ = respond.send(PollReply {
                reregister: true,
                ..PollReply::default()
            });
            return;
        };
        worker.last_seen = Instant::now();
        worker.last_seen_at = Some(Utc::now());
        if poll.draining && worker.state == State::Active {
            tracing::info!(worker = %worker.id, "subworker draining: no new tasks for it");
            worker.state = State::Draining;
        }
        // An earlier poll that is still held was given up by the worker.
        if let Some(old) = worker.held.take() {
            let _ = old.respond.send(PollReply::default());
        }
        let claimed: std::collections::HashSet<&String> = poll.running.iter().collect();
        let mut lost = Vec::new();
        let mut resend = Vec::new();
        for lease in &worker.leases {
            if claimed.contains(lease) {
                continue;
            }
            match self.workers.leases.get(lease) {
                // Sent in the reply to an earlier poll, and not there: that
                // reply never arrived.
                Some(info) if info.issued_in != 0 && info.issued_in < poll.seq => {
                    lost.push(lease.clone());
                }
                // This very poll again (NNG resent it): so is its reply.
                Some(info) if info.issued_in == poll.seq => resend.push(info.lease.clone()),
                _ => {}
            }
        }
        let mut cancel = std::mem::take(&mut worker.cancels);
        cancel.extend(
            poll.running
                .iter()
                .filter(|l| !worker.leases.contains(*l))
                .cloned(),
        );
        if cancel.is_empty() && resend.is_empty() {
            worker.held = Some(Held {
                seq: poll.seq,
                since: Instant::now(),
                respond,
                tasks: Vec::new(),
            });
        } else {
            let _ = respond.send(PollReply {
                tasks: resend,
                cancel,
                reregister: false,
            });
        }
        for lease in lost {
            tracing::warn!(%lease, "a lease never reached its subworker; the task is queued again");
            self.lose_lease(&lease, None);
        }
    }

    /// A subworker's report of a leased run: applied only if the lease is
    /// still that worker's (a late report of a revoked lease is dropped:
    /// the task already runs, or ran, elsewhere).
    fn work_result(&mut self, hello: &Hello, lease: &str, execution: Execution) -> Applied {
        if let Some(refused) = self.unregistered(hello, lease) {
            return refused;
        }
        let Some(info) = self.take_lease(hello, lease) else {
            tracing::info!(worker = %hello.worker_id, %lease, task_id = %execution.task_id, "late result of a revoked lease dropped: the task ran again elsewhere");
            return Applied {
                applied: false,
                error: None,
            };
        };
        if let Some(worker) = self.workers.get_mut(&hello.worker_id) {
            worker.done += 1;
        }
        self.finished(&info.task_id, execution, Some(&hello.worker_id));
        Applied {
            applied: true,
            error: None,
        }
    }

    /// A report on a lease of `hello`'s worker id from a process that has
    /// not registered (yet: the control plane restarted, and the worker
    /// has not registered again): not taken, with an error, so that a true
    /// subworker keeps its report and sends it again once registered.
    fn unregistered(&self, hello: &Hello, lease: &str) -> Option<Applied> {
        let its = self
            .workers
            .leases
            .get(lease)
            .is_some_and(|info| info.worker_id == hello.worker_id);
        (its && !self.holds(hello, lease)).then(|| Applied {
            applied: false,
            error: Some(format!(
                "subworker '{}' is not registered with this session; register first",
                hello.worker_id
            )),
        })
    }

    /// Whether `lease` is held by the worker `hello` names, speaking from
    /// the process (session) that registered: another process using the
    /// same worker id cannot report on or hand back its leases.
    fn holds(&self, hello: &Hello, lease: &str) -> bool {
        self.workers
            .leases
            .get(lease)
            .is_some_and(|info| info.worker_id == hello.worker_id)
            && self
                .workers
                .by_id
                .get(&hello.worker_id)
                .is_some_and(|w| w.session.as_ref() == Some(&hello.session))
    }

    /// Takes back `lease` from the worker `hello` names, if it is its.
    fn take_lease(&mut self, hello: &Hello, lease: &str) -> Option<workers::LeaseInfo> {
        if !self.holds(hello, lease) {
            return None;
        }
        if let Some(worker) = self.workers.get_mut(&hello.worker_id) {
            worker.last_seen = Instant::now();
            worker.last_seen_at = Some(Utc::now());
        }
        self.workers.remove_lease(lease)
    }

    /// A stopping subworker hands a task back: it runs elsewhere, and the
    /// interrupted attempt does not count against `retries`.
    fn release(&mut self, hello: &Hello, lease: &str, reason: &str) -> Applied {
        if let Some(refused) = self.unregistered(hello, lease) {
            return refused;
        }
        let applied = self.holds(hello, lease);
        if applied {
            self.requeue_lease(
                lease,
                Some((
                    HANDED_BACK,
                    format!("handed back by subworker '{}': {reason}", hello.worker_id),
                )),
            );
        }
        Applied {
            applied,
            error: None,
        }
    }

    fn deregister(&mut self, hello: &Hello) -> Applied {
        let ours = self
            .workers
            .by_id
            .get(&hello.worker_id)
            .is_some_and(|w| w.session.as_ref() == Some(&hello.session));
        if !ours {
            return Applied {
                applied: false,
                error: Some(format!(
                    "no subworker '{}' with this session",
                    hello.worker_id
                )),
            };
        }
        let leases: Vec<String> = self
            .workers
            .by_id
            .get(&hello.worker_id)
            .map(|w| w.leases.iter().cloned().collect())
            .unwrap_or_default();
        for lease in &leases {
            self.lose_lease(
                lease,
                Some(format!(
                    "subworker '{}' left while running it",
                    hello.worker_id
                )),
            );
        }
        self.workers.by_id.remove(&hello.worker_id);
        tracing::info!(worker = %hello.worker_id, "subworker deregistered");
        Applied {
            applied: true,
            error: None,
        }
    }

    /// A lease that is no longer its worker's: with `reason`, an attempt
    /// that may have started and is listed as lost; without, one that never
    /// reached the worker.
    fn lose_lease(&mut self, lease: &str, reason: Option<String>) {
        self.requeue_lease(lease, reason.map(|r| (LOST, r)));
    }

    /// Takes `lease` back and queues its task again (or ends it cancelled,
    /// if a cancel was on its way), listing the cut-short attempt with
    /// `status` and `error` when given. Such attempts do not count against
    /// `retries`.
    fn requeue_lease(&mut self, lease: &str, attempt: Option<(&str, String)>) {
        let Some(info) = self.workers.remove_lease(lease) else {
            return;
        };
        let task_id = info.task_id;
        let Some(active) = self
            .active
            .get_mut(&task_id)
            .filter(|a| a.lease.as_deref() == Some(lease))
        else {
            return;
        };
        if let Some(n) = self.running_by_type.get_mut(&active.record.name) {
            *n = n.saturating_sub(1);
        }
        active.lease = None;
        let started = active.record.attempt_started_at.take();
        active.record.worker = None;
        active.record.lease = None;
        if let Some((status, error)) = attempt {
            tracing::warn!(%task_id, worker = %info.worker_id, "{error}; the task runs again");
            let attempt = cut_short(
                &active.record,
                status,
                &error,
                Some(&info.worker_id),
                started,
            );
            active.record.attempts.push(attempt);
        }
        if active.cancel_requested {
            self.finish(
                &task_id,
                Status::Cancelled,
                Value::Null,
                Some("cancelled".to_owned()),
            );
            return;
        }
        active.record.status = Status::Queued;
        persist(self.journal.as_ref(), &active.record);
        self.place(&task_id);
    }

    /// Answers polls held long enough, and moves the tasks of workers gone
    /// silent elsewhere.
    fn check_workers(&mut self) {
        if self.workers.by_id.is_empty() {
            return;
        }
        let now = Instant::now();
        self.workers.expire_polls(now);
        for (worker, leases) in self.workers.silent(now) {
            tracing::warn!(%worker, leases = leases.len(), "subworker silent for {}: inactive; its tasks run elsewhere", humantime::format_duration(workers::INACTIVE_AFTER));
            for lease in leases {
                self.lose_lease(
                    &lease,
                    Some(format!(
                        "subworker '{worker}' stopped answering while running this attempt"
                    )),
                );
            }
        }
    }

    fn worker_list(&self) -> Vec<WorkerInfo> {
        let local = WorkerInfo {
            worker_id: self.settings.worker_id.clone(),
            kind: "control-plane".to_owned(),
            address: "(this control plane)".to_owned(),
            status: if self.settings.local_tasks {
                "local".to_owned()
            } else {
                "coordinator only".to_owned()
            },
            load: self.running,
            capacity: if self.settings.local_tasks {
                self.settings.concurrency
            } else {
                0
            },
            tasks_done: self.done_here,
            last_seen: Some(Utc::now()),
            registered_at: None,
            tasks: self.manifest.tasks.keys().cloned().collect(),
            warnings: Vec::new(),
        };
        std::iter::once(local).chain(self.workers.list()).collect()
    }

    /// Stops every running task's process group; each then ends cancelled.
    fn cancel_running(&mut self) {
        for task in self.active.values_mut() {
            if let Some(token) = &task.running {
                task.cancel_requested = true;
                token.cancel();
            }
            if let Some(lease) = &task.lease
                && self.workers.cancel(lease)
            {
                task.cancel_requested = true;
            }
        }
        self.flush_polls();
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
                if !active.is_running() && active.finishing.is_none() {
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

/// The record of an attempt cut short through no fault of the task (a stop
/// of the control plane, a subworker lost or stopping): it is listed, and
/// does not count against `retries`.
fn cut_short(
    record: &TaskRecord,
    status: &str,
    why: &str,
    worker: Option<&str>,
    started_at: Option<DateTime<Utc>>,
) -> Value {
    let mut attempt = serde_json::json!({
        "attempt": u32::try_from(record.attempts.len()).unwrap_or(u32::MAX) + 1,
        "status": status,
        "error": format!("{why}; the task runs again (this attempt does not count against retries)"),
        "started_at": started_at,
    });
    if let (Some(worker), Some(fields)) = (worker, attempt.as_object_mut()) {
        fields.insert("worker".to_owned(), Value::from(worker));
    }
    attempt
}

/// What a task's next attempt gets.
/// Records `record` in `journal`, soon: nothing waits on it (the writes that
/// must be on disk before something happens carry a [`Done`]). A function,
/// not a method, so that it can borrow the core's journal beside a task.
fn persist(journal: Option<&Journal>, record: &TaskRecord) {
    if let Some(journal) = journal {
        journal.write(vec![Change::put(record)], Commit::Soon, None);
    }
}

fn request_for(record: &TaskRecord) -> TaskRequest {
    TaskRequest {
        task_id: record.task_id.clone(),
        name: record.name.clone(),
        args: record.args.clone(),
        kwargs: record.kwargs.clone(),
        attempt: u32::try_from(record.attempts.len()).unwrap_or(u32::MAX) + 1,
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("active", &self.active.len())
            .field("queued", &self.queue.len())
            .field("running", &self.running)
            .field("workers", &self.workers.by_id.len())
            .finish_non_exhaustive()
    }
}
