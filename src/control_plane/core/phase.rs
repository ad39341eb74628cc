//! A live task's phase, and the one place it changes: [`Tasks::set_phase`].
//! Each change sets the task's wire status, keeps the counts of what runs
//! (here, and by task type) and publishes its event; so no other code
//! edits a phase, and the counts cannot drift from the phases.
//!
//! ```text
//!            ┌──────────── Waiting (eta) ◄──┐
//!            ▼                              │
//! Accepting ─┴─► Queued ─► Here / Leased ─┬─► Finishing ─► (published, gone)
//!                  ▲                      │
//!                  └── Waiting (retry) ◄──┘  (and back to Queued when a lease is lost)
//! ```

use std::collections::HashMap;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::control_plane::events::{Event, Events, RESULT_PREVIEW, TaskChange, TaskEvent};
use crate::protocol::{Status, TaskRecord};

/// A timer's place in the core's timer set: when, and a tie-breaker.
pub(super) type Timer = (Instant, u64);

/// Where a live task is.
#[derive(Debug)]
pub(super) enum Phase {
    /// Accepted; its record is on its way to disk, and it waits there
    /// before it may queue.
    Accepting,
    /// In the dispatch queue.
    Queued,
    /// On a timer: until its eta, or out its backoff before the next
    /// attempt (`retry`).
    Waiting { timer: Timer, retry: bool },
    /// An attempt runs here; `cancel` stops its process group.
    Here {
        cancel: CancellationToken,
        cancelling: bool,
    },
    /// An attempt runs on a subworker under `lease`.
    Leased {
        lease: String,
        worker: String,
        cancelling: bool,
    },
    /// It ended with this status; its final record is on its way to disk.
    Finishing(Status),
}

impl Phase {
    pub fn is_running(&self) -> bool {
        matches!(self, Phase::Here { .. } | Phase::Leased { .. })
    }

    /// Whether a cancel came while it runs (it then ends cancelled).
    pub fn cancelling(&self) -> bool {
        matches!(
            self,
            Phase::Here {
                cancelling: true,
                ..
            } | Phase::Leased {
                cancelling: true,
                ..
            }
        )
    }

    /// The wire status of a task in this phase (`record` says what an
    /// accepted or finishing one shows).
    fn status(&self, record: &TaskRecord) -> Status {
        match self {
            Phase::Accepting => record.status,
            Phase::Queued => Status::Queued,
            Phase::Waiting { retry: true, .. } => Status::Retrying,
            Phase::Waiting { retry: false, .. } => Status::Scheduled,
            Phase::Here { .. } | Phase::Leased { .. } => Status::Running,
            Phase::Finishing(_) => record.status,
        }
    }
}

/// A task that has not finished.
#[derive(Debug)]
pub(super) struct Active {
    pub record: TaskRecord,
    phase: Phase,
    /// Blocking submitters, answered with the final record.
    pub waiters: Vec<oneshot::Sender<TaskRecord>>,
    /// Queries that came while its final record was on its way to disk.
    pub readers: Vec<oneshot::Sender<Option<TaskRecord>>>,
    /// When it last entered the queue (for the wait-time figure).
    queued_since: Instant,
}

impl Active {
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Notes a cancel of the running attempt; false if it does not run.
    pub fn mark_cancelling(&mut self) -> bool {
        match &mut self.phase {
            Phase::Here { cancelling, .. } | Phase::Leased { cancelling, .. } => {
                *cancelling = true;
                true
            }
            _ => false,
        }
    }

    /// How long it has been in the queue (since it last entered it).
    pub fn queued_for(&self) -> std::time::Duration {
        self.queued_since.elapsed()
    }

    pub fn finishing(&self) -> Option<Status> {
        match self.phase {
            Phase::Finishing(status) => Some(status),
            _ => None,
        }
    }
}

/// Every live task, and the counts that follow from their phases.
#[derive(Debug)]
pub(super) struct Tasks {
    active: HashMap<String, Active>,
    /// Attempts running here.
    here: usize,
    /// Attempts running here or on subworkers, by task type.
    by_type: HashMap<String, u32>,
    /// Tasks accepted and not yet on disk.
    accepting: usize,
    events: Events,
}

impl Tasks {
    pub fn new(events: Events) -> Tasks {
        Tasks {
            active: HashMap::new(),
            here: 0,
            by_type: HashMap::new(),
            accepting: 0,
            events,
        }
    }

    pub fn get(&self, task_id: &str) -> Option<&Active> {
        self.active.get(task_id)
    }

    /// A task to edit (its record, waiters, readers: not its phase).
    pub fn get_mut(&mut self, task_id: &str) -> Option<&mut Active> {
        self.active.get_mut(task_id)
    }

    pub fn values(&self) -> impl Iterator<Item = &Active> {
        self.active.values()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Active> {
        self.active.values_mut()
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// Attempts running here.
    pub fn here(&self) -> usize {
        self.here
    }

    /// Tasks accepted whose record is not on disk yet.
    pub fn accepting(&self) -> usize {
        self.accepting
    }

    /// Attempts of `name` running here or on subworkers.
    pub fn running(&self, name: &str) -> u32 {
        self.by_type.get(name).copied().unwrap_or(0)
    }

    /// Takes a task in, in `phase` (Accepting for a new submit; whatever
    /// the journal says for one taken back), with `change` as its event
    /// (none: it is not news, e.g. a task taken back after a restart).
    pub fn insert(
        &mut self,
        record: TaskRecord,
        waiters: Vec<oneshot::Sender<TaskRecord>>,
        phase: Phase,
        change: Option<TaskChange>,
    ) {
        let task_id = record.task_id.clone();
        let mut active = Active {
            record,
            phase: Phase::Accepting,
            waiters,
            readers: Vec::new(),
            queued_since: Instant::now(),
        };
        let to = phase.status(&active.record);
        active.record.status = to;
        self.count(&active, &phase, 1);
        if let Some(change) = change {
            self.emit(&active.record, None, to, change);
        }
        active.phase = phase;
        self.active.insert(task_id, active);
    }

    /// Moves a task to `phase`: its status, the counts, and `change` as its
    /// event (none: an event comes later, e.g. when a final record is on
    /// disk). Returns the phase it left.
    pub fn set_phase(
        &mut self,
        task_id: &str,
        phase: Phase,
        change: Option<TaskChange>,
    ) -> Option<Phase> {
        let mut active = self.active.remove(task_id)?;
        let from = active.record.status;
        self.count(&active, &active.phase, -1);
        self.count(&active, &phase, 1);
        let to = phase.status(&active.record);
        active.record.status = to;
        if matches!(phase, Phase::Queued) {
            active.queued_since = Instant::now();
        }
        let waited_ms = active.queued_since.elapsed().as_secs_f64() * 1e3;
        if let Some(mut change) = change {
            if let TaskChange::Started { waited_ms: w, .. } = &mut change {
                *w = waited_ms;
            }
            self.emit(&active.record, Some(from), to, change);
        }
        let old = std::mem::replace(&mut active.phase, phase);
        self.active.insert(task_id.to_owned(), active);
        Some(old)
    }

    /// Removes a task whose final record is published (visible elsewhere;
    /// its event is [`Tasks::finished`]).
    pub fn remove(&mut self, task_id: &str) -> Option<Active> {
        let active = self.active.remove(task_id)?;
        self.count(&active, &active.phase, -1);
        Some(active)
    }

    /// Drops a task just accepted whose record could not be journaled (its
    /// submitter is told it was not taken).
    pub fn refuse(&mut self, task_id: &str, error: &str) {
        if let Some(active) = self.remove(task_id) {
            let change = TaskChange::Refused {
                error: error.to_owned(),
            };
            self.emit(
                &active.record,
                Some(active.record.status),
                Status::Failure,
                change,
            );
        }
    }

    /// Publishes the end of a task whose final record is `record`, from
    /// the status it showed before (`from`).
    pub fn finished(&self, record: &TaskRecord, from: Status) {
        let run_ms = record
            .attempts
            .last()
            .and_then(|a| a.execution())
            .map(|e| e.duration.as_secs_f64() * 1e3);
        let result = (!record.result.is_null())
            .then(|| crate::protocol::preview(&record.result, RESULT_PREVIEW));
        let change = TaskChange::Finished {
            error: record.error.clone(),
            attempts: record.attempts.len(),
            run_ms,
            result,
        };
        self.emit(record, Some(from), record.status, change);
    }

    fn emit(&self, record: &TaskRecord, from: Option<Status>, to: Status, change: TaskChange) {
        self.events.emit(Event::Task(TaskEvent {
            task_id: record.task_id.clone(),
            name: record.name.clone(),
            priority: record.priority,
            from,
            to,
            change,
        }));
    }

    /// Adds `n` (1 or -1) to the counts a task in `phase` is part of.
    fn count(&mut self, active: &Active, phase: &Phase, n: i64) {
        let add = |c: usize| usize::try_from(c as i64 + n).unwrap_or(0);
        match phase {
            Phase::Accepting => self.accepting = add(self.accepting),
            Phase::Here { .. } => self.here = add(self.here),
            _ => {}
        }
        if phase.is_running() {
            let running = self.by_type.entry(active.record.name.clone()).or_default();
            *running = u32::try_from(i64::from(*running) + n).unwrap_or(0);
        }
    }
}
