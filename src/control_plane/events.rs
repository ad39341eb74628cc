//! What happens in the control plane, as a stream of typed events: every
//! change of a task's phase, every subworker that joins, goes silent or
//! leaves, every result pushed out of the cache. The core publishes them on
//! a `tokio::sync::broadcast` channel and never waits on a listener (one
//! that falls behind loses the oldest and is told how many); and it keeps
//! [`Counters`] from the same events, which `/metrics` and the GUI read.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::manifest::Priority;
use crate::protocol::Status;

/// Events kept for listeners that fall behind, before they lose some.
pub const BUFFER: usize = 65_536;

/// The characters of a result an event (and a task list) shows.
pub const RESULT_PREVIEW: usize = 100;

/// An event, with its number (from 1, in order) and when it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Stamped {
    pub id: u64,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Task(TaskEvent),
    Worker(WorkerEvent),
    /// Finished tasks' records dropped: pushed out of the cache by its
    /// bounds, expired, or deleted.
    Forgotten {
        task_ids: Vec<String>,
        reason: Forget,
    },
    /// A new manifest was applied.
    Reloaded(Box<crate::protocol::ReloadReport>),
}

/// Why finished tasks' records were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Forget {
    /// Pushed out of the result cache by its bounds (count or bytes).
    Evicted,
    /// Kept for the result TTL, which ran out.
    Expired,
    /// Deleted on request.
    Deleted,
}

impl Forget {
    pub fn as_str(self) -> &'static str {
        match self {
            Forget::Evicted => "evicted",
            Forget::Expired => "expired",
            Forget::Deleted => "deleted",
        }
    }
}

/// What a task was submitted with, for listeners that show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Submitted {
    pub submitted_at: DateTime<Utc>,
    pub eta: Option<DateTime<Utc>>,
    pub args: Vec<serde_json::Value>,
    pub kwargs: serde_json::Map<String, serde_json::Value>,
    /// The task this one retries, if any.
    pub retry_of: Option<String>,
}

impl Submitted {
    pub fn of(record: &crate::protocol::TaskRecord) -> Arc<Submitted> {
        Arc::new(Submitted {
            submitted_at: record.submitted_at,
            eta: record.eta,
            args: record.args.clone(),
            kwargs: record.kwargs.clone(),
            retry_of: record.retry_of.clone(),
        })
    }
}

/// A task changed phase: `from` its state before (none when it was just
/// accepted) `to` its state now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskEvent {
    pub task_id: String,
    pub name: String,
    pub priority: Priority,
    pub from: Option<Status>,
    pub to: Status,
    #[serde(flatten)]
    pub change: TaskChange,
}

/// What happened to a task.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum TaskChange {
    /// Taken in (its record goes to the journal).
    Accepted {
        #[serde(skip)]
        submitted: Arc<Submitted>,
    },
    /// Taken back from the journal at a start.
    Restored,
    /// Accepted, then dropped: its record could not be journaled (its
    /// submitter was told it was not taken).
    Refused { error: String },
    /// In the queue, waiting for a slot.
    Queued,
    /// Waiting for its eta.
    Scheduled { eta: Option<DateTime<Utc>> },
    /// An attempt started, here (`worker` none) or on a subworker, after
    /// waiting `waited_ms` in the queue.
    Started {
        attempt: u32,
        worker: Option<String>,
        waited_ms: f64,
    },
    /// An attempt failed and the next waits `delay_ms`; the failed one ran
    /// `run_ms` (none if it never ran).
    Retrying {
        attempt: u32,
        error: String,
        delay_ms: f64,
        run_ms: Option<f64>,
    },
    /// An attempt was cut short (its subworker lost, or it handed it back)
    /// and the task waits again.
    Requeued { reason: String },
    /// It ended (and its final record is on disk): `to` is success,
    /// failure or cancelled; the last attempt ran `run_ms`.
    Finished {
        error: Option<String>,
        attempts: usize,
        run_ms: Option<f64>,
        /// The result's JSON, cut at [`RESULT_PREVIEW`] characters.
        result: Option<String>,
    },
}

/// A subworker's state changed, `from` (none: unknown until now) `to`
/// (none: forgotten).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerEvent {
    pub worker_id: String,
    pub from: Option<WorkerState>,
    pub to: Option<WorkerState>,
    #[serde(flatten)]
    pub change: WorkerChange,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum WorkerChange {
    /// Registered (for the first time, or again).
    Joined { capacity: usize, tasks: usize },
    /// Said it stops: no new tasks for it.
    Draining,
    /// Silent too long: its tasks run elsewhere.
    Inactive { leases_lost: usize },
    /// Deregistered.
    Left,
    /// Inactive long enough to be forgotten.
    Forgotten,
}

/// A subworker's state: `active` while it polls, `draining` once it says
/// it stops, `inactive` after a silence (its tasks go elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Active,
    Draining,
    Inactive,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Active => "active",
            WorkerState::Draining => "draining",
            WorkerState::Inactive => "inactive",
        }
    }
}

/// Publishes events; cloned into whatever publishes them.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Arc<Stamped>>,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    counters: Counters,
}

impl Default for Events {
    fn default() -> Self {
        Events::new(BUFFER)
    }
}

impl Events {
    /// Listeners that fall more than `buffer` events behind lose the oldest.
    pub fn new(buffer: usize) -> Events {
        let (tx, _) = broadcast::channel(buffer.max(1));
        Events {
            tx,
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers the event, counts it, and sends it to every listener without
    /// waiting for any.
    pub fn emit(&self, event: Event) {
        let stamped = {
            let mut inner = self.lock();
            inner.counters.apply(&event);
            inner.next += 1;
            Arc::new(Stamped {
                id: inner.next,
                at: Utc::now(),
                event,
            })
        };
        // No listener is not an error.
        let _ = self.tx.send(stamped);
    }

    /// A listener from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Stamped>> {
        self.tx.subscribe()
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// The number of the last event sent.
    pub fn last_id(&self) -> u64 {
        self.lock().next
    }
}

/// Upper bounds of the time histograms, in seconds (Prometheus' defaults,
/// stretched to minutes: tasks run longer than requests).
pub const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Observations in [`BUCKETS`], cumulative as Prometheus wants them, with
/// their sum and count.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Histogram {
    pub buckets: [u64; BUCKETS.len()],
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// What the events add up to.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counters {
    /// Tasks accepted since the start.
    pub accepted: u64,
    /// Tasks in each state now (queued, scheduled, running, retrying).
    pub current: BTreeMap<&'static str, i64>,
    /// Queued tasks by priority, critical first.
    pub queued_by_priority: [i64; 4],
    /// Tasks ended since the start, by final status.
    pub finished: BTreeMap<&'static str, u64>,
    /// Attempts started, and retries scheduled, since the start.
    pub started: u64,
    pub retries: u64,
    /// Time in the queue before an attempt started, and attempts' run
    /// times, by task name.
    pub wait_seconds: HashMap<String, Histogram>,
    pub run_seconds: HashMap<String, Histogram>,
    /// Subworkers by state now.
    pub workers: BTreeMap<&'static str, i64>,
    /// Results pushed out of the cache since the start.
    pub cache_evictions: u64,
    /// Results dropped because their TTL ran out, and on request.
    pub expired: u64,
    pub deleted: u64,
    /// Ends and retries by task name.
    pub by_name: HashMap<String, Outcomes>,
    /// Attempts running now (here or on subworkers), by task name.
    pub running_by_name: HashMap<String, i64>,
}

/// How the tasks of one name ended, and their retries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    pub success: u64,
    pub failure: u64,
    pub cancelled: u64,
    pub retries: u64,
}

impl Counters {
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Task(task) => self.task(task),
            Event::Worker(worker) => self.worker(worker),
            Event::Reloaded(_) => {}
            Event::Forgotten { task_ids, reason } => {
                let n = task_ids.len() as u64;
                match reason {
                    Forget::Evicted => self.cache_evictions += n,
                    Forget::Expired => self.expired += n,
                    Forget::Deleted => self.deleted += n,
                }
            }
        }
    }

    fn task(&mut self, e: &TaskEvent) {
        let live = |s: Status| !s.is_final();
        if let Some(from) = e.from.filter(|s| live(*s)) {
            *self.current.entry(from.as_str()).or_default() -= 1;
            if from == Status::Queued {
                self.queued_by_priority[e.priority as usize] -= 1;
            }
        }
        if e.from == Some(Status::Running) && e.to != Status::Running {
            *self.running_by_name.entry(e.name.clone()).or_default() -= 1;
        }
        if e.to == Status::Running && e.from != Some(Status::Running) {
            *self.running_by_name.entry(e.name.clone()).or_default() += 1;
        }
        if live(e.to) {
            *self.current.entry(e.to.as_str()).or_default() += 1;
            if e.to == Status::Queued {
                self.queued_by_priority[e.priority as usize] += 1;
            }
        }
        let seconds = |ms: f64| Duration::from_secs_f64(ms.max(0.0) / 1000.0).as_secs_f64();
        match &e.change {
            TaskChange::Accepted { .. } => self.accepted += 1,
            TaskChange::Started { waited_ms, .. } => {
                self.started += 1;
                self.wait_seconds
                    .entry(e.name.clone())
                    .or_default()
                    .observe(seconds(*waited_ms));
            }
            TaskChange::Retrying { run_ms, .. } => {
                self.retries += 1;
                self.outcomes(&e.name).retries += 1;
                if let Some(ms) = run_ms {
                    self.run_seconds
                        .entry(e.name.clone())
                        .or_default()
                        .observe(seconds(*ms));
                }
            }
            TaskChange::Finished { run_ms, .. } => {
                *self.finished.entry(e.to.as_str()).or_default() += 1;
                let outcomes = self.outcomes(&e.name);
                match e.to {
                    Status::Success => outcomes.success += 1,
                    Status::Cancelled => outcomes.cancelled += 1,
                    _ => outcomes.failure += 1,
                }
                if let Some(ms) = run_ms {
                    self.run_seconds
                        .entry(e.name.clone())
                        .or_default()
                        .observe(seconds(*ms));
                }
            }
            TaskChange::Queued
            | TaskChange::Scheduled { .. }
            | TaskChange::Requeued { .. }
            | TaskChange::Restored
            | TaskChange::Refused { .. } => {}
        }
    }

    fn outcomes(&mut self, name: &str) -> &mut Outcomes {
        self.by_name.entry(name.to_owned()).or_default()
    }

    fn worker(&mut self, e: &WorkerEvent) {
        if let Some(from) = e.from {
            *self.workers.entry(from.as_str()).or_default() -= 1;
        }
        if let Some(to) = e.to {
            *self.workers.entry(to.as_str()).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(from: Option<Status>, to: Status, change: TaskChange) -> Event {
        Event::Task(TaskEvent {
            task_id: "t".into(),
            name: "add".into(),
            priority: Priority::High,
            from,
            to,
            change,
        })
    }

    #[test]
    fn counters_follow_a_task_through_its_life() {
        let events = Events::default();
        let mut listener = events.subscribe();
        let record = crate::protocol::TaskRecord::new(
            "t".into(),
            "add".into(),
            Priority::High,
            Status::Queued,
        );
        events.emit(task(
            None,
            Status::Queued,
            TaskChange::Accepted {
                submitted: Submitted::of(&record),
            },
        ));
        events.emit(task(
            Some(Status::Queued),
            Status::Queued,
            TaskChange::Queued,
        ));
        let c = events.counters();
        assert_eq!((c.current["queued"], c.queued_by_priority[1]), (1, 1));
        events.emit(task(
            Some(Status::Queued),
            Status::Running,
            TaskChange::Started {
                attempt: 1,
                worker: None,
                waited_ms: 20.0,
            },
        ));
        events.emit(task(
            Some(Status::Running),
            Status::Success,
            TaskChange::Finished {
                error: None,
                attempts: 1,
                run_ms: Some(300.0),
                result: Some("8".into()),
            },
        ));
        let c = events.counters();
        assert_eq!((c.current["queued"], c.current["running"]), (0, 0));
        assert_eq!(c.queued_by_priority, [0, 0, 0, 0]);
        assert_eq!((c.accepted, c.started, c.finished["success"]), (1, 1, 1));
        assert_eq!(c.run_seconds["add"].count, 1);
        assert_eq!(c.run_seconds["add"].buckets[6], 1, "0.3 s is under 0.5 s");
        assert_eq!(c.run_seconds["add"].buckets[5], 0, "and over 0.25 s");
        assert_eq!(c.by_name["add"].success, 1);
        let ids: Vec<u64> = std::iter::from_fn(|| listener.try_recv().ok().map(|e| e.id)).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        assert_eq!(events.last_id(), 4);
    }

    #[test]
    fn a_listener_that_falls_behind_is_told_and_nothing_waits() {
        let events = Events::new(4);
        let mut slow = events.subscribe();
        for _ in 0..10 {
            events.emit(Event::Forgotten {
                task_ids: vec!["x".into()],
                reason: Forget::Evicted,
            });
        }
        assert!(matches!(
            slow.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(6))
        ));
        assert_eq!(slow.try_recv().map(|e| e.id).ok(), Some(7));
        assert_eq!(events.counters().cache_evictions, 10);
    }
}

/// Where finished tasks' whole records go, for a listener that needs more
/// than the events carry (telemetry builds a task's trace from its
/// record). Bounded: the core never waits; what does not fit is dropped
/// and counted.
#[derive(Debug, Clone)]
pub struct RecordSink {
    tx: tokio::sync::mpsc::Sender<Arc<crate::protocol::TaskRecord>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl RecordSink {
    /// A sink holding up to `capacity` records, and its receiving end.
    pub fn channel(
        capacity: usize,
    ) -> (
        RecordSink,
        tokio::sync::mpsc::Receiver<Arc<crate::protocol::TaskRecord>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        (
            RecordSink {
                tx,
                dropped: Arc::default(),
            },
            rx,
        )
    }

    pub fn send(&self, record: &crate::protocol::TaskRecord) {
        if self.tx.try_send(Arc::new(record.clone())).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Records dropped because the listener was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The count of dropped records, to read without holding the sink
    /// (which would keep its channel open).
    pub fn dropped_counter(&self) -> Arc<std::sync::atomic::AtomicU64> {
        Arc::clone(&self.dropped)
    }
}
