//! The control plane's core: one task that owns every task's state, the
//! queue, the timers and the result cache, and is driven by [`Command`]s over
//! a channel. Socket handlers never touch state; running tasks report back
//! through the same channel. So there is no lock, and every state change
//! happens in one place, in order.
//!
//! Life of a task: `queued` → `running` → `success` | `failure` | `cancelled`,
//! with `scheduled` (waiting for its eta) before `queued`, and `retrying`
//! (waiting out its backoff) between a failed attempt and the next `queued`.
//!
//! Where each part of that lives:
//! - [`phase`]: a live task's phase, and the one place it changes (with
//!   the counts and the events that follow from it);
//! - [`intake`]: submits, and where an accepted task waits (queue or timer);
//! - [`runs`]: handing tasks out (here or to a subworker), an attempt's
//!   end (retry, or the end of the task), publishing the result;
//! - [`cancel`]: cancels and the drain at shutdown;
//! - [`leases`]: the subworkers' side: what the worker registry decides
//!   about leases, turned into task changes;
//! - [`durable`]: the journal: what is written when, what waits for the
//!   disk, and taking the journal back after a restart.

mod cancel;
mod durable;
mod intake;
mod leases;
mod phase;
mod reload;
mod runs;
#[cfg(test)]
mod tests;
mod views;

pub use self::views::{Due, Lane, Queued, Queues, Refused, Timed, Visit};

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::durable::Journaled;
use self::phase::Tasks;
use super::events::Events;
use super::queue::DispatchQueue;
use super::results::ResultCache;
use super::workers::Workers;
use crate::executor::{Execution, Executor};
use crate::journal::Journal;
use crate::manifest::{Manifest, Priority};
use crate::protocol::{
    Applied, CancelReply, Hello, Poll, PollReply, Registered, Registration, Status, TaskRecord,
    WorkerInfo,
};

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
    /// The task this one retries.
    pub retry_of: Option<String>,
    /// Its trace context (none: it starts a trace).
    pub trace: Option<crate::protocol::TraceContext>,
    /// Gets the final record (blocking submits).
    pub waiter: Option<oneshot::Sender<TaskRecord>>,
}

/// A submit's answer: each task's status, in order, and whether the control
/// plane took them while it stops (they are in the journal and run after
/// the next start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance {
    pub statuses: Vec<Status>,
    pub deferred: bool,
}

/// What the core is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Accept all the tasks or none (a batch is all or nothing); a task id
    /// that is already known is not run again, its waiter just joins.
    /// Answered with each task's status, in order, once they are on disk.
    /// While the control plane stops, with a journal, they are still taken
    /// (they run after the next start); without one, refused.
    Submit {
        tasks: Vec<NewTask>,
        respond: oneshot::Sender<Result<Acceptance, String>>,
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
    /// Every record, to a visitor (see [`views`]).
    Visit {
        visit: Visit,
    },
    /// The records of these ids that are known, in order.
    GetMany {
        ids: Vec<String>,
        respond: oneshot::Sender<Vec<TaskRecord>>,
    },
    /// The queues, with the first `next` tasks of each.
    Queues {
        next: usize,
        respond: oneshot::Sender<Queues>,
    },
    /// Deletes a finished task's record.
    Delete {
        task_id: String,
        respond: oneshot::Sender<Result<(), Refused>>,
    },
    /// Applies a new manifest, loaded and checked (see [`reload`]).
    Reload {
        manifest: Arc<Manifest>,
        respond: oneshot::Sender<crate::protocol::ReloadReport>,
    },
}

/// Counts for logs, the GUI and `/metrics`.
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
    /// The cache's bounds: records, bytes, and how long each is kept.
    pub cache_capacity: usize,
    pub cache_max_bytes: usize,
    pub cache_ttl: Duration,
    /// Whether it drains (after a shutdown signal): no new tasks.
    pub draining: bool,
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
    /// Where callbacks may go: those of tasks taken back from the journal
    /// are checked again (the policy may have changed).
    pub callbacks: super::callbacks::CallbackPolicy,
    /// Give subworkers the tasks they define differently from the control
    /// plane (see [`Workers`]).
    pub allow_definition_mismatch: bool,
    /// Where finished records go (telemetry), if anywhere.
    pub records: Option<super::events::RecordSink>,
}

pub struct Core {
    manifest: Arc<Manifest>,
    /// Definitions a reload removed, kept for the tasks accepted before it
    /// (they run as they were accepted; no new task of these is taken).
    retired: std::collections::HashMap<String, Arc<crate::manifest::TaskSpec>>,
    executor: Arc<Executor>,
    settings: Settings,
    tasks: Tasks,
    queue: DispatchQueue,
    timers: BTreeSet<(Instant, u64, String)>,
    results: ResultCache,
    /// Tasks run here to the end.
    done_here: u64,
    workers: Workers,
    events: Events,
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
        events: Events,
    ) -> Core {
        let (journaled_tx, journaled_rx) = mpsc::unbounded_channel();
        let allow_mismatch = settings.allow_definition_mismatch;
        Core {
            manifest,
            retired: std::collections::HashMap::new(),
            executor,
            settings,
            tasks: Tasks::new(events.clone()),
            queue: DispatchQueue::default(),
            timers: BTreeSet::new(),
            results,
            done_here: 0,
            workers: Workers::new(events.clone(), allow_mismatch),
            events,
            tx,
            journal,
            journaled_tx,
            journaled_rx: Some(journaled_rx),
            callbacks: Arc::new(crate::transport::Pair0Senders::new()),
            draining: false,
            awaiting_disk: 0,
            seq: 0,
        }
    }

    /// Runs until `shutdown`, then drains: new submits are refused, waiting
    /// tasks end as failures (or stay in the journal), running ones get
    /// `shutdown_grace` to finish and are then cancelled. Returns once
    /// nothing runs and every write it waits on is on disk.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let Some(mut journaled) = self.journaled_rx.take() else {
            return;
        };
        let mut reports = Vec::new();
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
                () = crate::clock::until(next_timer) => self.fire_timers(),
                _ = sweep.tick() => self.sweep_results(),
                _ = worker_tick.tick() => self.check_workers(),
                () = shutdown.cancelled(), if !self.draining => {
                    kill_at = Some(Instant::now() + self.settings.shutdown_grace);
                    self.drain();
                }
                () = crate::clock::until(kill_at) => {
                    kill_at = None;
                    tracing::warn!(running = self.tasks.here(), "shutdown grace period over; cancelling running tasks");
                    self.cancel_running();
                }
            }
            if self.draining {
                // Tasks on subworkers are waited for too: their results
                // still come in while the management socket serves.
                if self.tasks.here() == 0
                    && self.workers.leases_out() == 0
                    && self.awaiting_disk == 0
                {
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
            Command::Submit { tasks, respond } => self.submit(tasks, respond),
            Command::Get { task_id, respond } => self.get(&task_id, respond),
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
                    running: self.tasks.here(),
                    cached_results: self.results.len(),
                    cached_bytes: self.results.bytes(),
                    cache_evictions: self.results.evictions(),
                    cache_capacity: self.results.capacity(),
                    cache_max_bytes: self.results.max_bytes(),
                    cache_ttl: self.results.ttl(),
                    draining: self.draining,
                });
            }
            Command::Finished { task_id, execution } => {
                self.attempt_ended(&task_id, *execution, None);
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
            Command::Visit { visit } => self.visit(visit),
            Command::GetMany { ids, respond } => {
                let _ = respond.send(self.get_many(&ids));
            }
            Command::Queues { next, respond } => {
                let _ = respond.send(self.queues(next));
            }
            Command::Delete { task_id, respond } => self.delete(&task_id, respond),
            Command::Reload { manifest, respond } => {
                let _ = respond.send(self.reload(manifest));
            }
        }
    }

    /// Drops expired results, from the journal too.
    fn sweep_results(&mut self) {
        let expired = self.results.sweep();
        tracing::debug!(
            swept = expired.len(),
            kept = self.results.len(),
            "result cache swept"
        );
        self.forget(expired, super::events::Forget::Expired);
    }

    fn add_timer(&mut self, at: Instant, task_id: &str) -> phase::Timer {
        self.seq += 1;
        self.timers.insert((at, self.seq, task_id.to_owned()));
        (at, self.seq)
    }

    fn remove_timer(&mut self, timer: phase::Timer, task_id: &str) {
        self.timers.remove(&(timer.0, timer.1, task_id.to_owned()));
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("active", &self.tasks.len())
            .field("queued", &self.queue.len())
            .field("running", &self.tasks.here())
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}
