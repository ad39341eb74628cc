//! What the core shows of its state beyond one task: every record at once
//! (for a read model built outside the core), several records, the queues
//! as they stand, and deleting a finished task's record.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Core;
use super::phase::Phase;
use crate::control_plane::events::Forget;
use crate::manifest::Priority;
use crate::protocol::TaskRecord;

/// Visits every record the core holds (live tasks first, then finished
/// ones, in no particular order) with the number of the last event
/// published: the records reflect every event up to it and none after.
pub struct Visit(pub Box<dyn Visitor>);

/// What a [`Visit`] runs.
pub trait Visitor: FnOnce(&mut dyn Iterator<Item = &TaskRecord>, u64) + Send {}

impl<F: FnOnce(&mut dyn Iterator<Item = &TaskRecord>, u64) + Send> Visitor for F {}

impl std::fmt::Debug for Visit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Visit")
    }
}

/// The queues as they stand.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Queues {
    /// Per priority, critical first.
    pub lanes: [Lane; 4],
    /// Tasks waiting for their eta, and for their next attempt: how many,
    /// and the first few, soonest first.
    pub scheduled: Timed,
    pub retrying: Timed,
}

/// One priority's queue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lane {
    pub count: usize,
    /// How long the task that has waited longest has waited.
    pub oldest: Option<Duration>,
    /// The first few, in the order they will start (per-type limits aside).
    pub next: Vec<Queued>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub task_id: String,
    pub name: String,
    pub waited: Duration,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timed {
    pub count: usize,
    pub next: Vec<Due>,
}

/// A task on a timer.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    pub task_id: String,
    pub name: String,
    pub at: DateTime<Utc>,
    /// The attempt it waits to make.
    pub attempt: u32,
}

/// Why a delete was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No such task (or its result has expired).
    Unknown(String),
    /// The task has not finished.
    Live(String),
}

impl Core {
    pub(super) fn visit(&self, visit: Visit) {
        let last = self.events.last_id();
        let mut all = self
            .tasks
            .values()
            .map(|a| &a.record)
            .chain(self.results.records());
        (visit.0)(&mut all, last);
    }

    /// The records of `ids` that are known, in that order (a finished
    /// one's place in the cache is not touched).
    pub(super) fn get_many(&self, ids: &[String]) -> Vec<TaskRecord> {
        ids.iter()
            .filter_map(|id| match self.tasks.get(id) {
                Some(active) => Some(active.record.clone()),
                None => self.results.peek(id).cloned(),
            })
            .collect()
    }

    /// The queues, with the first `next` tasks of each.
    pub(super) fn queues(&self, next: usize) -> Queues {
        let mut view = Queues::default();
        // A lane is in the order tasks entered the queue, and a task's wait
        // counts from then: its front has waited longest. Only the first
        // `next` are read: this is O(next), however long the queue.
        let lengths = self.queue.lengths();
        for priority in Priority::ALL {
            let lane = &mut view.lanes[priority as usize];
            lane.count = lengths[priority as usize];
            for waiting in self.queue.lane(priority).take(next) {
                let waited = self
                    .tasks
                    .get(&waiting.task_id)
                    .map(|a| a.queued_for())
                    .unwrap_or_default();
                lane.oldest.get_or_insert(waited);
                lane.next.push(Queued {
                    task_id: waiting.task_id.clone(),
                    name: waiting.name.clone(),
                    waited,
                });
            }
        }
        let (now, wall) = (Instant::now(), Utc::now());
        let counters = self.events.counters();
        let count = |state: &str| {
            usize::try_from(counters.current.get(state).copied().unwrap_or(0)).unwrap_or(0)
        };
        view.scheduled.count = count("scheduled");
        view.retrying.count = count("retrying");
        // Timers are soonest first; a scan stops once both lists are full,
        // or after SCAN timers (one kind may be rare).
        const SCAN: usize = 10_000;
        for (at, _, task_id) in self.timers.iter().take(SCAN) {
            if view.scheduled.next.len() >= next && view.retrying.next.len() >= next {
                break;
            }
            let Some(active) = self.tasks.get(task_id) else {
                continue;
            };
            let timed = match active.phase() {
                Phase::Waiting { retry: true, .. } => &mut view.retrying,
                Phase::Waiting { retry: false, .. } => &mut view.scheduled,
                _ => continue,
            };
            if timed.next.len() < next {
                let left = at.saturating_duration_since(now);
                timed.next.push(Due {
                    task_id: task_id.clone(),
                    name: active.record.name.clone(),
                    at: wall + chrono::Duration::from_std(left).unwrap_or_default(),
                    attempt: active.record.next_attempt(),
                });
            }
        }
        view
    }

    /// Deletes a finished task's record (from the journal too); answered
    /// once that is on disk.
    pub(super) fn delete(&mut self, task_id: &str, respond: oneshot::Sender<Result<(), Refused>>) {
        if let Some(active) = self.tasks.get(task_id) {
            let _ = respond.send(Err(Refused::Live(format!(
                "task {task_id} has not finished ({}): cancel it first",
                active.record.status.as_str()
            ))));
            return;
        }
        if self.results.peek(task_id).is_none() || !self.results.remove(task_id) {
            let _ = respond.send(Err(Refused::Unknown(format!(
                "task {task_id} not found (unknown, or its result expired)"
            ))));
            return;
        }
        self.forget(vec![task_id.to_owned()], Forget::Deleted);
        self.after_durable(move || {
            let _ = respond.send(Ok(()));
        });
    }
}
